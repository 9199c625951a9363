"""Compiled kernel tiles: a tile's whole layer recursion as one ``torch.compile``-d program.

Eager PyTorch runs each layer's kernel map as a dozen tensor operations, each one a pass over
the ``N1 × N2`` entries of a tile. Compiled (inductor: C++/OpenMP loops on the CPU, Triton on
CUDA), the input covariance GEMM is followed by every layer's elementwise work fused into a
few loops over the tile, with the transcendental functions vectorised: about 6× less time
per entry for a ReLU MLP on a CPU.

Compiling costs seconds (per network, dtype, device and tile shape; inductor caches its code
on disk, so later processes pay less), so it is done when asked for,
``kernel_fn(x1, x2, compile=True)``, or, with the default ``compile=None``, for
fully-connected kernels whose eager work is estimated to take much longer than compiling. Tiles are padded to one fixed size so
that one compiled program serves all of them. If compiling fails (no C++ compiler, an
unsupported operation), the tile is computed eagerly and a warning says so once.

Spatial kernels are compiled differently (`compiled_elementwise`): their layers run eagerly,
in small tiles (one after another) that replay each example's self-covariances (`_tape`; a
whole-tile program cannot), and only each nonlinearity's map of a tile's ``(nngp, ntk)``, a dozen
passes eagerly, runs as one compiled loop: several times faster for that part, and seconds to
compile per activation and tile shape instead of a minute per network.
"""

from __future__ import annotations

import contextlib
import math
import threading
import types
import warnings
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from .._kernel import Kernel
from .._numerics import differentiable
from ..blocks import swap_pairs, tiled
from ._covariance import symmetrized
from ._inputs import inputs_to_kernel, same_inputs

if TYPE_CHECKING:
    from ._elementwise import Activation
    from ._layer import Layer

#: Rows per compiled FC tile: big enough that OpenMP threads share each fused loop well.
COMPILED_TILE = 512
#: ``compile=None`` compiles fully-connected kernels whose eager work (entries × layers)
#: exceeds this: about half a minute of eager computation on two cores, several times a
#: compile's cost (measured: ~8.5 ns per entry and layer eager, 6-10 s to compile).
AUTO_COMPILE_WORK = 3e9

#: Compiled elementwise maps per activation (one per tile shape, layout and dtype); tiles of
#: further shapes (ragged last tiles of many sizes) are mapped eagerly.
MAX_ELEMENTWISE_PROGRAMS = 8

_PROGRAMS: weakref.WeakKeyDictionary[Layer, dict[tuple, TileProgram]] = weakref.WeakKeyDictionary()
_ELEMENTWISE: weakref.WeakKeyDictionary[Activation, dict[tuple, Any]] = weakref.WeakKeyDictionary()
_ELEMENTWISE_FAILED: weakref.WeakSet[Activation] = weakref.WeakSet()
_state = threading.local()


def leaf_count(layer: Layer) -> int:
    """Number of non-combinator layers in ``layer``'s tree."""
    return sum(leaf_count(c) for c in layer.children) if layer.children else 1


def worth_compiling(layer: Layer, n_pairs: int) -> bool:
    """Whether the eager work of ``n_pairs`` input pairs of a fully-connected kernel is large
    enough to pay for a compile. (Spatial kernels compile their nonlinearity maps only on
    request, ``compile=True``: see `compiled_elementwise`.)
    """
    return n_pairs * leaf_count(layer) > AUTO_COMPILE_WORK


def can_compile(x1: Any, x2: Any, kwargs: dict[str, Any], masked: bool) -> bool:
    """Whether a call can use compiled tiles: one input tensor each side, no masks, no
    per-example layer arguments (graph ``pattern``s), no autograd through the inputs."""
    if masked or kwargs or not isinstance(x1, torch.Tensor) or not (x2 is None or isinstance(x2, torch.Tensor)):
        return False
    return not (x1.requires_grad or (x2 is not None and x2.requires_grad))


def tile_program(layer: Layer, **options: Any) -> TileProgram:
    """The (cached) compiled program computing ``layer``'s kernel of one tile of inputs.

    ``options`` are `inputs_to_kernel`'s keyword arguments (layout and diagonal flags).
    """
    programs = _PROGRAMS.setdefault(layer, {})
    key = tuple(sorted(options.items()))
    if key not in programs:
        programs[key] = TileProgram(layer, options)
    return programs[key]


class TileProgram:
    """``program(a, b)``: the output `Kernel` of ``layer`` on inputs ``a`` and ``b`` (``None``
    for ``b = a``), computed by one compiled function.

    Inputs with fewer than ``rows`` examples (the last tiles) are padded by repeating their
    last example, and the results cut back, so every call has the same shapes and reuses one
    compiled program (one for diagonal tiles ``b = None``, one for the others).
    """

    def __init__(self, layer: Layer, options: dict[str, Any]) -> None:
        self.layer = layer
        self.options = options
        self.failed = False

        def kernel_of_tile(
            a: torch.Tensor, b: torch.Tensor | None, x1_is_x2: bool, mirror: bool
        ) -> tuple[Kernel, dict[str, torch.Tensor]]:
            k = layer.transform(inputs_to_kernel(a, b, x1_is_x2=x1_is_x2, **options))
            # the transposed tile for the other triangle of a symmetric kernel, written by the
            # same fused loop (a strided copy afterwards costs as much as the tile itself)
            mirrored = {}
            if mirror:
                for name in ("nngp", "ntk"):
                    t = getattr(k, name)
                    if t is not None and t.ndim >= 2:
                        mirrored[name] = swap_pairs(t, k.diagonal_spatial).contiguous()
            return k, mirrored

        self.eager = kernel_of_tile
        # A fresh code object per program: dynamo keeps compiled versions (and counts them
        # against its recompile limit) per code object, so networks must not share one.
        code = kernel_of_tile.__code__.replace(co_name=f"kernel_of_tile_{id(self):x}")
        fresh = types.FunctionType(code, kernel_of_tile.__globals__, code.co_name, None, kernel_of_tile.__closure__)
        with _without_torch_deprecation_notices():  # importing torch._dynamo warns
            self.compiled = torch.compile(fresh, dynamic=False)

    def kernel(self, x1: torch.Tensor, x2: torch.Tensor | None, tile: int | None) -> Kernel:
        """The output `Kernel` of ``x1`` and ``x2``, in ``(tile, tile)`` tiles (``None``: the
        memory-based tiling found none needed; FC kernels still take `COMPILED_TILE` tiles).

        Tiles run one after another, each using all of torch's threads; for ``x2 = None`` only
        the upper triangle of tiles is computed.
        """
        batch_axis = self.options["batch_axis"]
        n1 = x1.shape[batch_axis]
        n2 = n1 if x2 is None else x2.shape[batch_axis]
        if max(n1, n2) > COMPILED_TILE:  # (fully-connected kernels only: spatial ones compile maps)
            tile = COMPILED_TILE
        if tile is None or n1 * n2 <= tile * tile or not self.options["diagonal_batch"]:
            return self(x1, x2)[0]
        rows1, rows2 = (tile if n1 > tile else None), (tile if n2 > tile else None)

        def tile_kernel(a: torch.Tensor, b: torch.Tensor | None, get: Any, mirror: bool) -> tuple[Kernel, dict]:
            return self(a, b, rows1, rows2, mirror=mirror)

        return tiled(tile_kernel, x1, x2, None, tile, True, None, {}, analytic=True, parallel=False, mirrors=True)

    def __call__(
        self,
        a: torch.Tensor,
        b: torch.Tensor | None,
        rows1: int | None = None,
        rows2: int | None = None,
        mirror: bool = False,
    ) -> tuple[Kernel, dict[str, torch.Tensor]]:
        """The kernel of ``a`` and ``b`` (with, if ``mirror``, the transposed nngp/ntk tiles),
        padded to ``rows1`` and ``rows2`` examples (default: as given) and cut back."""
        x1_is_x2 = same_inputs(a, b)
        if b is not None and x1_is_x2:
            b, mirror = None, False  # the same inputs: the diagonal-tile program (cov2 not computed)
        batch_axis = self.options["batch_axis"]
        n1 = a.shape[batch_axis]
        n2 = n1 if b is None else b.shape[batch_axis]
        if not self.failed:
            pa = _pad(a, rows1, batch_axis)
            pb = None if b is None else _pad(b, rows2, batch_axis)
            try:
                with _without_torch_deprecation_notices():
                    k, mirrored = self.compiled(pa, pb, x1_is_x2, mirror)
                return symmetrized(_cut(k, n1, n2)), {name: t[:n2, :n1] for name, t in mirrored.items()}
            except Exception as error:  # noqa: BLE001 - any compiler failure: eager gives the answer or the real error
                k, mirrored = self.eager(a, b, x1_is_x2, mirror)
                result = symmetrized(k), mirrored
                self.failed = True
                warnings.warn(
                    f"tangents: torch.compile could not compile the kernel of {self.layer.name} "
                    f"({type(error).__name__}: {(str(error).splitlines() or [''])[0]}); computing it eagerly. "
                    f"Pass compile=False to kernel_fn to skip compiling.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return result
        k, mirrored = self.eager(a, b, x1_is_x2, mirror)
        return symmetrized(k), mirrored


@contextlib.contextmanager
def _without_torch_deprecation_notices() -> Iterator[None]:
    """Silences the deprecation notices torch's compiler stack raises about its own internals."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _pad(x: torch.Tensor, rows: int | None, axis: int) -> torch.Tensor:
    """``x`` with its last example repeated along ``axis`` up to ``rows`` examples."""
    missing = 0 if rows is None else rows - x.shape[axis]
    if missing <= 0:
        return x
    last = x.narrow(axis, x.shape[axis] - 1, 1)
    return torch.cat([x, last.expand(*[missing if i == axis % x.ndim else -1 for i in range(x.ndim)])], axis)


def _cut(k: Kernel, n1: int, n2: int) -> Kernel:
    """``k`` without the padded examples (batch axes first in nngp/ntk, and in cov1/cov2)."""
    if k.nngp.shape[0] == n1 and k.nngp.shape[1] == n2:
        return k

    def pair(t: torch.Tensor | None) -> torch.Tensor | None:
        return t if t is None or t.ndim < 2 else t[:n1, :n2]

    def own(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if t is None:
            return None
        return t[:n] if k.diagonal_batch else t[:n, :n]

    shape1, shape2 = list(k.shape1), list(k.shape2)
    shape1[k.batch_axis], shape2[k.batch_axis] = n1, n2
    return k.replace(
        nngp=pair(k.nngp),
        ntk=pair(k.ntk),
        cov1=own(k.cov1, n1),
        cov2=own(k.cov2, n2),
        shape1=tuple(shape1),
        shape2=tuple(shape2),
    )


def entries_per_pair(x: torch.Tensor, batch_axis: int, channel_axis: int | None, diagonal_spatial: bool) -> int:
    """Covariance entries per pair of examples: 1 for FC inputs, ``∏ S`` or ``∏ S²`` for
    spatial ones (diagonal or full spatial covariances)."""
    skip = {batch_axis % x.ndim, (-1 if channel_axis is None else channel_axis) % x.ndim}
    spatial = [d for i, d in enumerate(x.shape) if i not in skip]
    return math.prod(d if diagonal_spatial else d * d for d in spatial)


# ---------------------------------------------------------------------- spatial kernels


@contextlib.contextmanager
def compiled_elementwise() -> Iterator[None]:
    """Within (in this thread): activations map ``(nngp, ntk)`` by `compiled_pair_map`."""
    previous, _state.on = getattr(_state, "on", False), True
    try:
        yield
    finally:
        _state.on = previous


def compiled_pair_map(
    activation: Activation, nngp: torch.Tensor, ntk: torch.Tensor | None, var1: torch.Tensor, var2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(T(nngp), Ṫ(nngp) · ntk)`` by a compiled program, within `compiled_elementwise`;
    ``None`` (map eagerly) outside it, when differentiating, past `MAX_ELEMENTWISE_PROGRAMS`
    shapes, or after a compiler failure (warned about once)."""
    if not getattr(_state, "on", False) or torch.compiler.is_compiling() or activation in _ELEMENTWISE_FAILED:
        return None
    if differentiable(nngp, ntk, var1, var2):
        return None
    key = tuple((t.shape, t.stride()) for t in (nngp, var1, var2)) + (nngp.dtype, nngp.device, ntk is None)
    programs = _ELEMENTWISE.setdefault(activation, {})
    program = programs.get(key)
    if program is None:
        if len(programs) >= MAX_ELEMENTWISE_PROGRAMS:
            return None
        program = programs.setdefault(key, _compile_pair_map(activation))
    try:
        with _without_torch_deprecation_notices():
            return program(nngp, ntk, var1, var2)
    except Exception as error:  # noqa: BLE001 - any compiler failure: the eager map gives the answer
        _ELEMENTWISE_FAILED.add(activation)
        warnings.warn(
            f"tangents: torch.compile could not compile the kernel map of {activation.name} "
            f"({type(error).__name__}: {(str(error).splitlines() or [''])[0]}); computing it eagerly. "
            f"Pass compile=False to kernel_fn to skip compiling.",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


def _compile_pair_map(activation: Activation) -> Any:
    def pair_map(
        nngp: torch.Tensor, ntk: torch.Tensor | None, var1: torch.Tensor, var2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t, tdot = activation.expectations(nngp, var1, var2, ntk is not None)
        return t, None if ntk is None else tdot * ntk

    # a fresh code object per program, as for `TileProgram` (dynamo's per-code recompile limit)
    code = pair_map.__code__.replace(co_name=f"pair_map_{id(activation):x}_{len(_ELEMENTWISE.get(activation, ()))}")
    fresh = types.FunctionType(code, pair_map.__globals__, code.co_name, None, pair_map.__closure__)
    with _without_torch_deprecation_notices():
        return torch.compile(fresh, dynamic=False)
