r"""Kernels estimated by sampling finite networks (neural-tangents' ``monte_carlo_kernel_fn``).

For a network ``f(θ, x)`` with random initial parameters θ ~ ``init_fn``, the Monte Carlo
estimates with ``n`` samples θ₁, ..., θₙ are the averages of the empirical kernels

    K̂(x1, x2) = (1/n) Σᵢ f(θᵢ, x1) f(θᵢ, x2)ᵀ,        Θ̂(x1, x2) = (1/n) Σᵢ J(θᵢ, x1) J(θᵢ, x2)ᵀ,

(with the output axes in ``trace_axes`` averaged away and those in ``diagonal_axes``
reduced to their diagonal, as in `tangents.empirical_kernel_fn`). As the hidden widths grow
they converge to the analytic NNGP and NTK of ``stax`` layers' ``kernel_fn``; for any
network they converge as ``n → ∞`` to the expected empirical kernels at that width.

Example:
    >>> import torch, tangents
    >>> from tangents import stax
    >>> init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
    >>> mc_kernel_fn = tangents.monte_carlo_kernel_fn(init_fn, apply_fn, key=0, n_samples=64)
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> mc_kernel_fn(x, None, "ntk").shape  # close to kernel_fn(x, None, "ntk")
    torch.Size([4, 4])
"""

from __future__ import annotations

import collections
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, Union

import numpy as np
import torch
from ._torch_private import tree_flatten, tree_map

from .blocks import batch
from ._empirical._implementation import DEFAULT_NTK_IMPLEMENTATION, NtkImplementation
from .empirical import empirical_kernel_fn

PyTree = Any
Get = Union[None, str, tuple[str, ...], list[str]]
KeyLike = Union[int, np.integer, torch.Generator]

_GETS = ("nngp", "ntk")
#: A progress bar is shown by default (``progress=None``) from this many samples on,
#: when standard error is a terminal.
_PROGRESS_THRESHOLD = 100


class MonteCarloKernelFn(Protocol):
    """``kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs)`` → estimate (or a generator of them)."""

    def __call__(self, x1: PyTree, x2: PyTree | None = None, get: Get = None, **kwargs: Any) -> Any: ...


def monte_carlo_kernel_fn(
    init_fn: Callable[..., tuple[Any, PyTree]],
    apply_fn: Callable[..., PyTree],
    key: KeyLike,
    n_samples: int | Iterable[int],
    batch_size: int = 0,
    device_count: int = -1,
    store_on_device: bool = True,
    trace_axes: int | tuple[int, ...] = (-1,),
    diagonal_axes: int | tuple[int, ...] = (),
    vmap_axes: Any = None,
    implementation: NtkImplementation | int = DEFAULT_NTK_IMPLEMENTATION,
    *,
    progress: bool | None = None,
) -> MonteCarloKernelFn:
    r"""Returns a Monte Carlo estimator of the NNGP and NTK of the network ``(init_fn, apply_fn)``.

    Each sample draws fresh parameters ``init_fn(seed, x1.shape)`` and computes the empirical
    NNGP ``f(x1) f(x2)ᵀ`` and NTK ``J(x1) J(x2)ᵀ`` (`tangents.empirical_kernel_fn`); the
    estimate is their average. The samples depend only on ``key``: calling the returned
    function twice, or with another ``batch_size``, uses the same networks.

    Args:
        init_fn: ``init_fn(rng, input_shape) -> (output_shape, params)``, e.g. the first
            element of a ``stax`` triple; ``rng`` is an int seed. If it accepts ``dtype``
            and ``device`` keywords (``stax`` layers do), parameters are sampled in
            float64 on the CPU; either way they are then cast to the inputs' dtype and
            device (so float32 and float64 inputs see the same networks).
        apply_fn: ``apply_fn(params, x, **kwargs)``; it receives ``rng=`` (a
            ``torch.Generator``, fresh per sample, for ``Dropout``) if it accepts it.
        key: an int seed or a ``torch.Generator`` (its current state is copied; the
            generator itself is not advanced).
        n_samples: the number of samples (an int), or an iterable of ints: then the
            returned function yields the running estimate after each of those counts
            (in increasing order, computed with one pass over ``max(n_samples)`` samples).
        batch_size: compute each sample's kernel in ``(batch_size, batch_size)`` tiles of
            ``(x1, x2)`` (see `tangents.batch`); ``0`` computes it whole. Same numbers.
        device_count: accepted for neural-tangents compatibility (see `tangents.batch`).
        store_on_device: ``False`` keeps the estimate in CPU memory.
        trace_axes: output axes whose pairs are averaged away (default: the logits).
        diagonal_axes: output axes whose pairs are reduced to their diagonal.
        vmap_axes: the batch axes of ``apply_fn`` for the NTK (see `tangents.empirical_ntk_fn`);
            ``None`` assumes nothing.
        implementation: how the empirical NTK is computed (`tangents.NtkImplementation`).
        progress: show a tqdm bar over samples; ``None`` (default) shows one for
            ``max(n_samples) >= 100`` when standard error is a terminal.

    Returns:
        ``kernel_fn(x1, x2=None, get=None, **apply_fn_kwargs)``. ``x1`` ``(N1, ...)`` and
        ``x2`` ``(N2, ...)`` are tensors or numpy arrays (or trees of them); ``x2=None``
        means ``x1``, and so does an ``x2`` equal to ``x1`` (one forward pass per network,
        so ``Dropout`` draws one mask for both, as the analytic kernel assumes). ``get``
        is ``"nngp"``, ``"ntk"`` (that estimate), a tuple of them (a named tuple
        ``MonteCarloKernel`` in that order) or ``None`` (both). Kernels have
        shape ``(N1, N2)`` for outputs ``(N, O)`` with the default ``trace_axes``; they are
        on the inputs' device, in their dtype. With a list of ``n_samples`` the result is a
        generator of such estimates.

    Raises:
        TypeError: ``key`` is not an int or ``torch.Generator``; ``n_samples`` is not an int
            or an iterable of ints.
        ValueError: a sample count is not positive; ``get`` names something other than
            ``"nngp"`` and ``"ntk"``.

    Example:
        >>> init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(1024), stax.Erf(), stax.Dense(1))
        >>> x = torch.randn(3, 5, dtype=torch.float64)
        >>> estimates = monte_carlo_kernel_fn(init_fn, apply_fn, 0, [10, 100])(x, None, "nngp")
        >>> [torch.dist(k, kernel_fn(x, None, "nngp")) for k in estimates]  # shrinking error
    """
    counts, as_generator = _canonical_n_samples(n_samples)
    state = _key_state(key)
    init_accepts_dtype = _accepts(init_fn, "dtype") and _accepts(init_fn, "device")
    apply_accepts_rng = _accepts(apply_fn, "rng")

    def apply_seeded(params: PyTree, x: PyTree, *, dropout_seed: int | None = None, **kw: Any) -> PyTree:
        """``apply_fn`` with its ``rng`` seeded afresh on every call: the empirical kernels call
        ``f`` several times (profile, passes of each batch), and every call must draw the same
        dropout masks, one network per sample."""
        if dropout_seed is not None and "rng" not in kw:
            kw["rng"] = _generator(dropout_seed, _first_tensor(x).device)
        return apply_fn(params, x, **kw)

    empirical = empirical_kernel_fn(apply_seeded if apply_accepts_rng else apply_fn, trace_axes, diagonal_axes,
                                    vmap_axes, implementation)
    # Reject a bad batch_size or device_count now rather than at the first call.
    batch(empirical, batch_size, device_count, store_on_device)

    def one_sample(
        x1: PyTree, x2: PyTree | None, names: tuple[str, ...], init_seed: int, rng_seed: int, kwargs: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        like = _first_tensor(x1)
        shape = tree_map(lambda t: tuple(t.shape), x1)
        if init_accepts_dtype:
            # Sampled in float64 and rounded: the same key gives the same networks in
            # float32 and float64.
            _, params = init_fn(init_seed, shape, dtype=torch.float64, device="cpu")
        else:
            _, params = init_fn(init_seed, shape)
        params = tree_map(lambda p: _cast(p, like), params)

        def kernel(xa: PyTree, xb: PyTree | None, get: Any, **kw: Any) -> Any:
            if apply_accepts_rng and "rng" not in kw:
                kw["dropout_seed"] = rng_seed
            return empirical(xa, xb, get, params, **kw)

        tiled = batch(kernel, batch_size, device_count, store_on_device, progress=False)
        # One call per kernel; every call of apply_fn with a generator seeded by rng_seed.
        return {name: tiled(x1, x2, name, **kwargs) for name in names}

    def estimates(x1: PyTree, x2: PyTree | None, names: tuple[str, ...], kwargs: dict[str, Any]) -> Iterator[dict]:
        x1 = _as_tensors(x1)
        x2 = None if x2 is None or _same_inputs(x1, _as_tensors(x2)) else _as_tensors(x2)
        generator = torch.Generator(device="cpu")
        generator.set_state(state)
        total: dict[str, torch.Tensor] = {}
        largest = max(counts)
        show = progress if progress is not None else (largest >= _PROGRESS_THRESHOLD and sys.stderr.isatty())
        bar = _progress_bar(largest, show)
        for n in range(1, largest + 1):
            init_seed, rng_seed = (int(s) for s in torch.randint(0, 2**62, (2,), generator=generator))
            sample = one_sample(x1, x2, names, init_seed, rng_seed, kwargs)
            for name, value in sample.items():
                value = value if store_on_device else value.cpu()
                total[name] = value if name not in total else total[name] + value
            bar.update(1)
            if n in counts:
                yield {name: value / n for name, value in total.items()}
        bar.close()

    def kernel_fn(x1: PyTree, x2: PyTree | None = None, get: Get = None, **apply_fn_kwargs: Any) -> Any:
        names, single = _check_get(get)
        results = estimates(x1, x2, names, apply_fn_kwargs)
        if as_generator:
            return (_format(r, names, single) for r in results)
        for r in results:
            last = r
        return _format(last, names, single)

    return kernel_fn


# ---------------------------------------------------------------------- helpers


def _canonical_n_samples(n_samples: Any) -> tuple[frozenset[int], bool]:
    """``(the sample counts to report, whether to return a generator)``."""
    if isinstance(n_samples, (int, np.integer)) and not isinstance(n_samples, bool):
        counts, as_generator = [int(n_samples)], False
    elif isinstance(n_samples, Iterable) and not isinstance(n_samples, (str, bytes, torch.Tensor)):
        counts, as_generator = list(n_samples), True
        bad = [n for n in counts if isinstance(n, bool) or not isinstance(n, (int, np.integer))]
        if bad or not counts:
            raise TypeError(
                f"monte_carlo_kernel_fn: n_samples must be an int or a non-empty iterable of ints, "
                f"got {n_samples!r}."
            )
        counts = [int(n) for n in counts]
    else:
        raise TypeError(
            f"monte_carlo_kernel_fn: n_samples must be an int or an iterable of ints, got {type(n_samples).__name__}."
        )
    if any(n <= 0 for n in counts):
        raise ValueError(f"monte_carlo_kernel_fn: sample counts must be positive, got n_samples={n_samples!r}.")
    return frozenset(counts), as_generator


def _key_state(key: Any) -> torch.Tensor:
    """The state of a CPU generator seeded by ``key`` (a copy: ``key`` is not advanced)."""
    if isinstance(key, torch.Generator):
        if key.device.type != "cpu":
            generator = torch.Generator(device="cpu")
            generator.manual_seed(key.initial_seed())
            return generator.get_state()
        return key.get_state()
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(key))
        return generator.get_state()
    raise TypeError(
        f"monte_carlo_kernel_fn: key must be an int seed or a torch.Generator, got {type(key).__name__}; "
        f"e.g. key=0."
    )


def _check_get(get: Get) -> tuple[tuple[str, ...], bool]:
    """``(names, whether a single tensor is returned)``."""
    if get is None:
        return _GETS, False
    single = isinstance(get, str)
    names = (get,) if single else tuple(get)
    bad = [name for name in names if name not in _GETS]
    if bad or not names:
        raise ValueError(
            f"monte_carlo_kernel_fn: get={get!r} is not supported; Monte Carlo estimates "
            f"'nngp' and 'ntk': pass one of them, a tuple of them, or None for both."
        )
    return names, single


_NAMED_TUPLES: dict[tuple[str, ...], type] = {}


def _format(result: dict[str, torch.Tensor], names: tuple[str, ...], single: bool) -> Any:
    if single:
        return result[names[0]]
    cls = _NAMED_TUPLES.get(names)
    if cls is None:
        cls = _NAMED_TUPLES[names] = collections.namedtuple("MonteCarloKernel", names)  # type: ignore[misc]
    return cls(*(result[name] for name in names))


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _as_tensors(x: PyTree) -> PyTree:
    """Numpy arrays in ``x`` become tensors; everything else is left alone."""

    def convert(leaf: Any) -> Any:
        return torch.from_numpy(np.ascontiguousarray(leaf)) if isinstance(leaf, np.ndarray) else leaf

    return tree_map(convert, x)


def _same_inputs(x1: PyTree, x2: PyTree) -> bool:
    """Whether ``x2`` holds the same inputs as ``x1`` (then it is treated as ``None``, as
    ``stax`` kernels do: a stochastic ``apply_fn`` then sees one draw for both batches)."""
    leaves1, spec1 = tree_flatten(x1)
    leaves2, spec2 = tree_flatten(x2)
    if spec1 != spec2:
        return False
    for a, b in zip(leaves1, leaves2):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a is not b and (a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b)):
                return False
        elif a is not b:
            return False
    return True


def _first_tensor(x: PyTree) -> torch.Tensor:
    found: list[torch.Tensor] = []
    tree_map(lambda leaf: found.append(leaf) if isinstance(leaf, torch.Tensor) else None, x)
    if not found:
        raise TypeError(
            f"monte_carlo_kernel_fn: x1 must be a torch.Tensor or a numpy array (or a tree of them), "
            f"got {type(x).__name__}."
        )
    return found[0]


def _cast(p: Any, like: torch.Tensor) -> Any:
    """A floating parameter in the inputs' dtype and on their device."""
    if isinstance(p, torch.Tensor) and p.is_floating_point():
        return p.to(dtype=like.dtype, device=like.device)
    if isinstance(p, torch.Tensor):
        return p.to(device=like.device)
    return p


def _generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Monte Carlo samples", leave=False)


__all__ = ["MonteCarloKernelFn", "monte_carlo_kernel_fn"]
