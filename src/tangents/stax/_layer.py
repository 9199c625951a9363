"""`Layer`: one object, three uses (the NT triple, ``kernel_fn``, a finite ``nn.Module``).

A layer implements four small pieces:

* ``output_shape(input_shape)``: the finite-width output shape (``-1`` marks any size);
* ``init_params(generator, input_shape, dtype, device)``: its parameters, a tuple of
  tensors (``None`` for an absent bias) named by ``param_names``;
* ``apply(params, x, **kwargs)``: the finite-width forward pass;
* ``propagate(k, **kwargs)``: the infinite-width map ``Kernel -> Kernel``.

Everything a user touches is built on those here, once: input validation, the input
kernel, requirement fusion, shape bookkeeping, ``get`` selection, and the module wrapper.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from .._kernel import Get, Kernel
from .._kernel import check_get as _check_get
from .._kernel import select as _select
from ..blocks import available_memory, first_tensor, tiled
from .._numerics import differentiable
from ._compiled import can_compile, compiled_elementwise, entries_per_pair, tile_program, worth_compiling
from ._covariance import symmetrized
from ._hyperparameters import differentiated_hyperparameters
from ._inputs import inputs_to_kernel
from ._masking import MaskedArray, apply_leaf_masked, has_masks, input_mask, propagate_masks
from ._requirements import Requirements
from ._tape import COVARIANCE_TAPES, transform_with_tape
from ._validate import (
    as_input_tensors,
    check_apply_call,
    check_call_kwargs,
    check_init_call,
    check_input_shape,
    check_mask_constant,
)

Shape = tuple[int, ...]
ShapeTree = Union[Shape, list, tuple]
Params = Any
KernelTree = Union[Kernel, list, tuple]
RngLike = Union[None, int, torch.Generator]


class Layer:
    """Base class of every `tangents.stax` layer and combinator.

    Unpacks as neural-tangents' triple::

        init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))

    and also offers ``layer.kernel_fn``, ``layer.init_fn``, ``layer.apply_fn`` and
    ``layer.to_module(input_shape)`` directly.
    """

    #: Names of the tensors in this layer's parameter tuple, e.g. ``("W", "b")``.
    param_names: tuple[str, ...] = ()
    #: Attributes holding numbers the kernel may be differentiated in (given as 0-d tensors),
    #: e.g. ``("W_std", "b_std")``; see `tangents.stax._hyperparameters`.
    hyperparameter_names: tuple[str, ...] = ()
    #: Layers this one is composed of (combinators only).
    children: tuple[Layer, ...] = ()
    #: Zero the covariances of masked entries after `propagate` (NT's ``remask_kernel``).
    remask: bool = False
    #: ``kernel_fn(x1, x2, get=None)`` returns `Kernel` records (what `tangents.batch` checks).
    returns_kernel_records: bool = True
    #: Per-call keyword arguments this layer's kernel takes (e.g. ``{"pattern"}`` for graph
    #: layers). ``kernel_fn`` accepts its documented keywords and the union of these over the
    #: network; any other keyword is a ``TypeError`` (a typo must not be silently ignored).
    kernel_kwargs: frozenset[str] = frozenset()
    #: Per-call keyword arguments this layer's finite forward pass takes (``apply_fn``,
    #: ``to_module``'s forward), e.g. ``{"rng", "mode"}`` for ``Dropout``.
    apply_kwargs: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return getattr(self, "display_name", type(self).__name__)

    def __repr__(self) -> str:
        return f"{self.name}()"

    # ------------------------------------------------------------------ to implement

    @property
    def requirements(self) -> Requirements:
        """What this layer needs from its input kernel (default: nothing)."""
        return Requirements()

    def output_shape(self, input_shape: ShapeTree) -> ShapeTree:
        """The finite-width output shape for ``input_shape`` (default: unchanged)."""
        return input_shape

    def init_params(
        self, generator: torch.Generator | None, input_shape: ShapeTree, dtype: torch.dtype, device: torch.device
    ) -> Params:
        """Samples this layer's parameters (default: none)."""
        return ()

    def apply(self, params: Params, x: Any, **kwargs: Any) -> Any:
        """The finite-width forward pass."""
        raise NotImplementedError(f"{self.name}: no finite-width forward pass is defined.")

    def propagate(self, k: KernelTree, **kwargs: Any) -> KernelTree:
        """The infinite-width map from the input kernel to the output kernel."""
        raise NotImplementedError(f"{self.name}: no infinite-width kernel is defined.")

    def mask(self, mask: Any, input_shape: ShapeTree) -> Any:
        """The output's boolean mask (``True`` = masked) given the input's (default: unchanged)."""
        return mask

    def apply_with_masks(self, params: Params, x: Any, mask: Any, **kwargs: Any) -> tuple[Any, Any]:
        """The finite-width forward pass carrying masks: ``(outputs, output mask)``.

        A leaf layer sees 0 at masked entries, receives ``mask=`` and maps the mask with
        `mask`; combinators override this to carry masks through their children.
        """
        return apply_leaf_masked(self, params, x, mask, **kwargs)

    # ------------------------------------------------------------------ internal composition

    @property
    def replays_covariances(self) -> bool:
        """Whether ``propagate``'s ``nngp``/``ntk`` never depend on the ``cov1``/``cov2`` it
        outputs, so that a tile may skip computing them and take recorded ones (`_tape`).
        Layers saying ``True`` leave those two ``None`` when `skipping_covariances` (through
        `map_covariances` or `Activation.map_kernel`). Default: ``False``."""
        return False

    def transform(self, k: KernelTree, **kwargs: Any) -> KernelTree:
        """``propagate`` plus the bookkeeping of output shapes; what combinators call.

        Under a covariance tape (tiles of a spatial kernel), leaf layers record or replay
        their output's self-covariances (see `_tape`).
        """
        return transform_with_tape(self, k, lambda kernel: self._transform(kernel, **kwargs))

    def _transform(self, k: KernelTree, **kwargs: Any) -> KernelTree:
        out = self.propagate(k, **kwargs)
        if self.children:
            return out  # children already set their own shapes
        shape1 = self.output_shape(_tree_shapes(k, "shape1"))
        shape2 = self.output_shape(_tree_shapes(k, "shape2"))
        out = _tree_set_shapes(out, shape1, shape2)
        return propagate_masks(self, k, out, type(self).mask is not Layer.mask) if has_masks(k) else out

    # ------------------------------------------------------------------ public API

    def __iter__(self) -> Iterator[Callable[..., Any]]:
        return iter((self.init_fn, self.apply_fn, self.kernel_fn))

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int | slice) -> Any:
        """``layer[0]``, ``layer[1]``, ``layer[2]``: ``init_fn``, ``apply_fn``, ``kernel_fn``, as
        neural-tangents' tuple ``stax.serial(...)[2]`` (slices too)."""
        if isinstance(index, bool) or not isinstance(index, (int, slice)):
            raise TypeError(
                f"{self.name}[{index!r}]: a layer indexes like neural-tangents' triple "
                f"(init_fn, apply_fn, kernel_fn); use an int 0-2 or a slice, got {type(index).__name__}."
            )
        return (self.init_fn, self.apply_fn, self.kernel_fn)[index]

    def init_fn(
        self,
        rng: RngLike,
        input_shape: ShapeTree,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[ShapeTree, Params]:
        """Samples parameters of the finite-width network.

        Args:
            rng: a seed (int), a ``torch.Generator``, or ``None`` for torch's global RNG.
            input_shape: the input shape, e.g. ``(-1, 784)`` (``-1``: any batch size).
            dtype: parameter dtype (default: ``torch.get_default_dtype()``).
            device: parameter device (default: CPU).

        Returns:
            ``(output_shape, params)`` as in neural-tangents.
        """
        dtype, device = check_init_call(dtype, device)
        generator = _as_generator(rng, device)
        input_shape = _canonical_shape(input_shape)
        check_input_shape(input_shape)
        return self.output_shape(input_shape), self.init_params(generator, input_shape, dtype, device)

    def apply_fn(self, params: Params, inputs: Any, *, mask_constant: float | None = None, **kwargs: Any) -> Any:
        """Runs the finite-width network: ``apply_fn(params, x, rng=None, mode='train')``.

        Args:
            params: the parameters, as `init_fn` returns them.
            inputs: ``x``, ``(N, ...)`` (a list of tensors for a network with several inputs),
                of the parameters' dtype and device.
            mask_constant: with it (NT's variable-length inputs), entries of ``x`` equal to it
                are masked and a ``MaskedArray(outputs, mask)`` is returned.
            **kwargs: ``rng`` (a ``torch.Generator`` for ``Dropout``), ``mode`` (``'train'`` or
                ``'test'``) and the keywords the network's layers declare (``pattern`` for
                graph layers); any other keyword is a ``TypeError``.

        Raises:
            TypeError: an unknown keyword; ``x`` not a floating tensor, or of another dtype
                than the parameters.
            ValueError: parameters not of this network; ``x`` on another device than the
                parameters, with NaN/inf, or of a shape the parameters were not made for.
        """
        return self._apply_checked(params, inputs, mask_constant, kwargs, "apply_fn")

    def _apply_checked(self, params: Params, x: Any, mask_constant: float | None, kwargs: dict[str, Any], caller: str) -> Any:
        """`apply_fn` and ``to_module``'s forward: the call validated once, then the layers."""
        check_call_kwargs(self, kwargs, caller)
        check_mask_constant(mask_constant, caller)
        _check_rng_and_mode(kwargs, caller)
        mask = None
        if mask_constant is not None:
            x, mask = input_mask(x, mask_constant)  # masked entries zeroed (NaN may be the padding)
        x = check_apply_call(self, params, x, caller)
        if mask is None:
            return self.apply(params, x, **kwargs)
        return MaskedArray(*self.apply_with_masks(params, x, mask, **kwargs))

    def kernel_fn(
        self,
        x1_or_kernel: Any,
        x2: Any = None,
        get: Get = None,
        *,
        diagonal_batch: bool | None = None,
        diagonal_spatial: bool | None = None,
        compile: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        r"""The infinite-width NNGP and NTK of the network, as neural-tangents' ``kernel_fn``.

        Args:
            x1_or_kernel: inputs ``(N1, ...)`` (tensor or numpy array, or a list of them for
                multi-input networks), or a `Kernel` to propagate.
            x2: second inputs ``(N2, ...)``; ``None`` means ``x2 = x1`` (computed once).
            get: ``None`` for the `Kernel`; a name (``"nngp"``, ``"ntk"``, ``"cov1"``, ...)
                for that tensor; a tuple of names for a named tuple of them.
            diagonal_batch: store only per-example variances in ``cov1``/``cov2``
                (default: whatever the network needs, usually ``True``).
            diagonal_spatial: store only location-diagonal covariances (default: whatever
                the network needs).
            compile: compute the kernel with ``torch.compile``. Fully-connected kernels: the
                whole recursion of each tile fused into a few loops (several times faster
                per entry, after a compile of seconds per network, dtype and tile shape);
                spatial kernels: each nonlinearity's map of a tile compiled, the layers
                eager (about 1.3x faster on a ReLU CNN, after seconds per activation and
                tile shape). ``None`` (default) compiles fully-connected kernels whose eager
                work would take much longer than compiling (tens of seconds); ``True``
                whenever the call allows it (fully-connected: single tensor inputs, no masks,
                no per-example layer arguments; no gradients); ``False`` never.
            **kwargs: ``mask_constant`` (entries equal to it are absent, as in NT) and the
                keywords the network's layers declare (``pattern=(A1, A2)`` for graph layers),
                passed to every layer; any other keyword is a ``TypeError``.

        Returns:
            A `Kernel`, a tensor, or a named tuple ``AnalyticKernel``, on the inputs' device
            and in their dtype. ``nngp``/``ntk`` have shape ``(N1, N2)`` for FC networks.

        Example:
            >>> from tangents import stax
            >>> _, _, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
            >>> x = torch.randn(5, 3, dtype=torch.float64)
            >>> kernel_fn(x, None, "ntk").shape
            torch.Size([5, 5])
        """
        names = _check_get(get)
        if compile not in (None, True, False):
            raise TypeError(f"kernel_fn: compile must be None, True or False, got {compile!r}.")
        mask_constant = kwargs.pop("mask_constant", None)
        check_mask_constant(mask_constant, "kernel_fn")
        check_call_kwargs(self, kwargs, "kernel_fn")
        if _is_kernel_tree(x1_or_kernel):
            if mask_constant is not None:
                raise ValueError(
                    f"kernel_fn: mask_constant={mask_constant!r} was given with a Kernel, but masks "
                    f"come from inputs only (as in neural-tangents); pass the inputs, or a Kernel whose "
                    f"mask1/mask2 are already set (k.replace(mask1=..., mask2=...))."
                )
            if x2 is not None:
                raise ValueError("kernel_fn: x2 must be None when a Kernel is given (it already holds the second batch).")
            out = self.transform(x1_or_kernel, diagonal_batch=diagonal_batch, diagonal_spatial=diagonal_spatial, **kwargs)
            return _select(out, get)

        # validated with masked entries zeroed (NaN may be the padding), then padded again:
        # each tile takes its masks from its own rows in `kernel_of_inputs`
        x1_or_kernel, mask1 = input_mask(x1_or_kernel, mask_constant)
        x2, mask2 = input_mask(x2, mask_constant)
        x1, x2 = as_input_tensors(x1_or_kernel, x2)
        x1, x2 = _tree_pad(x1, mask1, mask_constant), _tree_pad(x2, mask2, mask_constant)
        batch, spatial, batch_axis, channel_axis = self.requirements.resolve(diagonal_batch, diagonal_spatial)
        compute_ntk = names is None or "ntk" in names
        # derivatives (in the inputs or in tensor hyperparameters) need eager tiles in this thread
        differentiating = differentiable(first_tensor(x1), None if x2 is None else first_tensor(x2))
        differentiating = differentiating or differentiated_hyperparameters(self)
        if differentiating:
            compile = False

        pairs_are_spatial = entries_per_pair(first_tensor(x1), batch_axis, channel_axis, spatial) > 1
        # spatial kernels "compiled": eager layers, compiled nonlinearity maps (see `_compiled`)
        compiled_maps = compile is True and (pairs_are_spatial or not isinstance(x1, torch.Tensor))

        def kernel_of_inputs(a: Any, b: Any, tile_get: Get = None, **tile_kwargs: Any) -> Any:
            a, mask_a = input_mask(a, mask_constant)
            b, mask_b = input_mask(b, mask_constant)
            k = _tree_map2(
                lambda xa, xb: inputs_to_kernel(
                    xa,
                    xb,
                    diagonal_batch=batch,
                    diagonal_spatial=spatial,
                    compute_ntk=compute_ntk,
                    batch_axis=batch_axis,
                    channel_axis=channel_axis,
                ),
                a,
                b,
            )
            if mask_constant is not None:
                k = _tree_set_masks(k, mask_a, mask_b)
            with compiled_elementwise() if compiled_maps else contextlib.nullcontext():
                return _select(symmetrized(self.transform(k, **tile_kwargs)), tile_get)

        tile = _auto_tile_size(x1, x2, batch, spatial, batch_axis, channel_axis)
        if (not pairs_are_spatial and compile is not False
                and can_compile(x1, x2, kwargs, mask_constant is not None)):
            n1 = x1.shape[batch_axis]
            n_pairs = n1 * (n1 + 1) // 2 if x2 is None else n1 * x2.shape[batch_axis]
            if compile or worth_compiling(self, n_pairs):
                options = dict(diagonal_batch=batch, diagonal_spatial=spatial, compute_ntk=compute_ntk,
                               batch_axis=batch_axis, channel_axis=channel_axis)
                return _select(tile_program(self, **options).kernel(x1, x2, tile), get)
        if tile is None:
            return kernel_of_inputs(x1, x2, get, **kwargs)
        # compiled maps: tiles in turn (dynamo guards on the thread count and must not compile
        # in one thread while another runs eagerly: `torch.compiler.is_compiling` is global)
        return tiled(kernel_of_inputs, x1, x2, get, tile, True, None, kwargs, analytic=True,
                     parallel=not (compiled_maps or differentiating),
                     tape=COVARIANCE_TAPES if pairs_are_spatial else None)

    def spec(self) -> dict[str, Any]:
        """This network as JSON data: its layers and every argument (see `tangents.stax.from_spec`).

        Example:
            >>> stax.serial(stax.Dense(8), stax.Relu()).spec()["layers"][0]["type"]
            'Dense'
        """
        from ._spec import layer_spec  # reads every layer family, which all import this module

        return layer_spec(self)

    def to_module(
        self,
        input_shape: ShapeTree,
        *,
        seed: RngLike = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> StaxModule:
        """The same network at finite width, as a trainable ``torch.nn.Module``.

        Parameters are sampled as in `init_fn` and scaled in the forward pass exactly as
        the kernel assumes (NTK or standard parameterization, per layer).

        Args:
            input_shape: the input shape, e.g. ``(-1, 784)``.
            seed: a seed, a ``torch.Generator``, or ``None`` for torch's global RNG.
            dtype: parameter dtype (default: ``torch.get_default_dtype()``).
            device: parameter device.

        Example:
            >>> net = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
            >>> model = net.to_module((-1, 3), seed=0)
            >>> model(torch.randn(4, 3)).shape
            torch.Size([4, 1])
        """
        _, params = self.init_fn(seed, input_shape, dtype=dtype, device=device)
        return StaxModule(self, params)


class StaxModule(nn.Module):
    """A finite-width `Layer` with its parameters registered as ``nn.Parameter``s.

    Combinators hold their children as submodules ``"0"``, ``"1"``, ...; leaf layers hold
    their parameters under the layer's ``param_names`` (``W``, ``b``, ...). In training
    mode stochastic layers (``Dropout``) are active; ``model.eval()`` turns them off.
    """

    def __init__(self, layer: Layer, params: Params) -> None:
        super().__init__()
        object.__setattr__(self, "layer", layer)  # not a submodule
        if layer.children:
            for i, (child, child_params) in enumerate(zip(_children_for_params(layer), params)):
                self.add_module(str(i), StaxModule(child, child_params))
        else:
            for name, tensor in zip(layer.param_names, params):
                self.register_parameter(name, None if tensor is None else nn.Parameter(tensor))

    def params(self) -> Params:
        """The parameters in the layout ``layer.apply_fn`` takes."""
        if self.layer.children:
            return tuple(child.params() for child in self.children())  # type: ignore[union-attr]
        return tuple(getattr(self, name) for name in self.layer.param_names)

    def forward(self, x: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("mode", "train" if self.training else "test")
        mask_constant = kwargs.pop("mask_constant", None)
        return self.layer._apply_checked(self.params(), x, mask_constant, kwargs, "model(x)")

    def extra_repr(self) -> str:
        return "" if self.layer.children else repr(self.layer)


def _children_for_params(layer: Layer) -> Sequence[Layer]:
    """The child layer owning each entry of a combinator's parameter tuple."""
    return getattr(layer, "param_children", layer.children)


# ---------------------------------------------------------------------- helpers

#: Pairs per tile when a kernel is computed tile by tile: 256 x 256 float64 entries keep a
#: tile's intermediates in cache, which makes the elementwise recursion several times faster.
_CACHE_TILE = 256
#: Tensors of one tile's size alive at once (inputs, outputs and temporaries), for sizing.
_LIVE_TENSORS = 24
#: Bytes of one covariance tensor of a spatial tile (the tile's pairs × entries per pair).
_SPATIAL_TILE_BYTES = 4 * 2**20


def _auto_tile_size(
    x1: Any, x2: Any, diagonal_batch: bool, diagonal_spatial: bool, batch_axis: int, channel_axis: int | None
) -> int | None:
    """Tile size for computing a kernel in tiles, or ``None`` to compute it at once.

    Large kernels are tiled for speed (cache-sized tiles) and, when one tile's
    intermediates per pair of inputs are large (spatial covariances), so that the peak
    memory stays within a quarter of what is free (shared by the threads that compute tiles
    in parallel on the CPU).
    """
    if isinstance(x1, (list, tuple)) or not diagonal_batch:
        return None
    n1 = x1.shape[batch_axis]
    n2 = n1 if x2 is None else x2.shape[batch_axis]
    spatial = [d for i, d in enumerate(x1.shape) if i not in (batch_axis % x1.ndim, (channel_axis or -1) % x1.ndim)]
    per_pair = 1
    for d in spatial:
        per_pair *= d if diagonal_spatial else d * d
    pair_bytes = per_pair * x1.element_size() * _LIVE_TENSORS
    budget = available_memory(x1.device) // 4
    if x1.device.type == "cpu":  # tiles run in parallel threads, each with its intermediates
        budget //= max(1, torch.get_num_threads())
    if per_pair == 1:
        tile = _CACHE_TILE
    else:
        # Spatial covariances: tiles of a few MB per tensor, so that each layer's dozen passes
        # stay in cache and tiles run in parallel (and x2=None computes the upper triangle);
        # smaller still if memory is short. CNN 16x16, N=20, float64: 1.3 s in tiles of 3
        # examples against 3.4 s in two halves (measured on 2 cores).
        memory_tile = max(1, int((budget / pair_bytes) ** 0.5))
        cache_tile = max(1, int((_SPATIAL_TILE_BYTES / (per_pair * x1.element_size())) ** 0.5))
        tile = min(memory_tile, cache_tile)
        return None if max(n1, n2) <= tile else tile
    if n1 * n2 <= 2 * tile * tile:
        return None
    return tile



def _check_rng_and_mode(kwargs: dict[str, Any], caller: str) -> None:
    """``rng`` and ``mode``, the keywords every ``apply_fn`` takes (for stochastic layers)."""
    rng = kwargs.get("rng")
    if rng is not None and not isinstance(rng, torch.Generator):
        raise TypeError(
            f"{caller}: rng must be a torch.Generator or None (torch's global RNG), got {type(rng).__name__}; "
            f"e.g. rng=torch.Generator().manual_seed(0) (neural-tangents' PRNG keys have no meaning here)."
        )
    mode = kwargs.get("mode")
    if mode is not None and mode not in ("train", "test"):
        raise ValueError(f"{caller}: mode must be 'train' or 'test', got {mode!r}.")


def _as_generator(rng: RngLike, device: torch.device | str | None) -> torch.Generator | None:
    if rng is None or isinstance(rng, torch.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        g = torch.Generator(device="cpu")
        g.manual_seed(int(rng))
        return g
    raise TypeError(f"init_fn: rng must be an int seed, a torch.Generator or None, got {type(rng).__name__}.")


def _canonical_shape(shape: ShapeTree) -> ShapeTree:
    if isinstance(shape, torch.Size):
        return tuple(shape)
    if isinstance(shape, (list, tuple)) and shape and all(isinstance(s, (list, tuple, torch.Size)) for s in shape):
        return type(shape)(_canonical_shape(s) for s in shape)
    if isinstance(shape, (list, tuple)) and all(isinstance(s, (int, np.integer)) for s in shape):
        return tuple(int(s) for s in shape)
    raise TypeError(f"init_fn: input_shape must be a tuple of ints (or a list of such), got {shape!r}.")


def _is_kernel_tree(x: Any) -> bool:
    if isinstance(x, Kernel):
        return True
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(_is_kernel_tree(i) for i in x)


def _tree_map2(fn: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    if isinstance(a, (list, tuple)):
        bs = [None] * len(a) if b is None else b
        return type(a)(_tree_map2(fn, ai, bi) for ai, bi in zip(a, bs))
    return fn(a, b)


def _tree_shapes(k: KernelTree, attr: str) -> ShapeTree:
    if isinstance(k, Kernel):
        return getattr(k, attr)
    return type(k)(_tree_shapes(ki, attr) for ki in k)


def _tree_set_shapes(k: KernelTree, shape1: ShapeTree, shape2: ShapeTree) -> KernelTree:
    if isinstance(k, Kernel):
        return k.replace(shape1=shape1, shape2=shape2)
    return type(k)(_tree_set_shapes(ki, s1, s2) for ki, s1, s2 in zip(k, shape1, shape2))


def _tree_pad(x: Any, mask: Any, mask_constant: float | None) -> Any:
    """``x`` with ``mask_constant`` put back at the masked entries (undoes `input_mask`'s zeroing)."""
    if mask is None:
        return x
    if isinstance(x, (list, tuple)):
        return type(x)(_tree_pad(xi, mi, mask_constant) for xi, mi in zip(x, mask))
    return x.masked_fill(mask.to(x.device), mask_constant)


def _tree_set_masks(k: KernelTree, mask1: Any, mask2: Any) -> KernelTree:
    if isinstance(k, Kernel):
        return k.replace(mask1=mask1, mask2=mask2)
    m2s = [None] * len(k) if mask2 is None else mask2
    return type(k)(_tree_set_masks(ki, m1, m2) for ki, m1, m2 in zip(k, mask1, m2s))
