"""`tangents.monte_carlo_kernel_fn`, and Monte Carlo convergence of every layer's kernel.

The convergence tests are the independent oracle of `stax`: the average over freshly
initialised finite networks of their empirical NNGP ``f(x1) f(x2)ᵀ`` and NTK ``J(x1) J(x2)ᵀ``
must approach the analytic ``kernel_fn``. The tolerance follows from the samples
themselves (see `_check_converges`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from networks import FINITE_NETWORKS, Net, ids, inputs

import tangents
from tangents import monte_carlo_kernel_fn, stax

# ---------------------------------------------------------------------- the estimator


def _mlp(width: int = 64, out: int = 3) -> stax.Layer:
    return stax.serial(stax.Dense(width, W_std=1.5, b_std=0.1), stax.Erf(), stax.Dense(out, W_std=1.2, b_std=0.2))


def _x(n: int, seed: int = 0, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_linear_network_ntk_is_exact_for_every_sample():
    # f(x) = W_std x W / sqrt(d) + b_std b: J(x1) J(x2)ᵀ = W_std² x1·x2 / d + b_std² whatever W, b.
    init_fn, apply_fn, _ = stax.Dense(5, W_std=1.7, b_std=0.3)
    x1, x2 = _x(4, 1), _x(3, 2)
    ntk = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 3, progress=False)(x1, x2, "ntk")
    expected = 1.7**2 * x1 @ x2.T / 4 + 0.3**2
    torch.testing.assert_close(ntk, expected, rtol=1e-12, atol=1e-12)


def test_same_key_same_networks_and_generator_key_is_not_advanced():
    init_fn, apply_fn, _ = _mlp()
    x = _x(4)
    a = monte_carlo_kernel_fn(init_fn, apply_fn, 7, 4, progress=False)(x, None, "nngp")
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    mc = monte_carlo_kernel_fn(init_fn, apply_fn, generator, 4, progress=False)
    b = mc(x, None, "nngp")
    assert torch.equal(a, b)
    assert torch.equal(generator.get_state(), state)
    assert torch.equal(mc(x, None, "nngp"), b)  # a second call samples the same networks
    c = monte_carlo_kernel_fn(init_fn, apply_fn, 8, 4, progress=False)(x, None, "nngp")
    assert not torch.allclose(a, c)


def test_n_samples_list_yields_running_means():
    init_fn, apply_fn, _ = _mlp()
    x = _x(3)
    counts = [1, 2, 5]
    mc = monte_carlo_kernel_fn(init_fn, apply_fn, 0, counts, progress=False)
    estimates = mc(x, None, ("nngp", "ntk"))
    assert not isinstance(estimates, tuple) and hasattr(estimates, "__next__")
    estimates = list(estimates)
    assert len(estimates) == 3
    one = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 1, progress=False)(x, None)
    two = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, progress=False)(x, None)
    five = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 5, progress=False)(x, None)
    for got, want in zip(estimates, (one, two, five)):
        torch.testing.assert_close(got.nngp, want.nngp, rtol=1e-13, atol=0)
        torch.testing.assert_close(got.ntk, want.ntk, rtol=1e-13, atol=0)
    # The running mean after 2 samples is the mean of sample 1 and sample 2.
    second = 2 * estimates[1].ntk - estimates[0].ntk
    assert not torch.allclose(second, estimates[0].ntk)
    # Sets and unsorted lists report in increasing order.
    unsorted = list(monte_carlo_kernel_fn(init_fn, apply_fn, 0, (5, 1), progress=False)(x, None, "ntk"))
    torch.testing.assert_close(unsorted[0], one.ntk, rtol=1e-13, atol=0)
    torch.testing.assert_close(unsorted[1], five.ntk, rtol=1e-13, atol=0)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_batch_size_tiles_give_the_untiled_kernels(batch_size: int):
    init_fn, apply_fn, _ = _mlp()
    x1, x2 = _x(5, 1), _x(3, 2)
    whole = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 3, progress=False)
    tiled = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 3, batch_size=batch_size, progress=False)
    for a, b in ((x1, None), (x1, x2)):
        want, got = whole(a, b), tiled(a, b)
        torch.testing.assert_close(got.nngp, want.nngp, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got.ntk, want.ntk, rtol=1e-12, atol=1e-14)


def test_get_return_types_and_axes():
    init_fn, apply_fn, _ = _mlp(out=3)
    x1, x2 = _x(4, 1), _x(2, 2)
    mc = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, progress=False)
    both = mc(x1, x2)
    assert type(both).__name__ == "MonteCarloKernel" and both._fields == ("nngp", "ntk")
    reversed_ = mc(x1, x2, ("ntk", "nngp"))
    assert reversed_._fields == ("ntk", "nngp")
    torch.testing.assert_close(reversed_.ntk, both.ntk, rtol=0, atol=0)
    ntk = mc(x1, x2, "ntk")
    assert isinstance(ntk, torch.Tensor) and ntk.shape == (4, 2)
    full = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, trace_axes=(), progress=False)(x1, x2, "ntk")
    assert full.shape == (4, 2, 3, 3)
    torch.testing.assert_close(torch.diagonal(full, dim1=2, dim2=3).mean(-1), ntk)
    diag = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, trace_axes=(), diagonal_axes=(-1,), progress=False)
    torch.testing.assert_close(diag(x1, x2, "ntk"), torch.diagonal(full, dim1=2, dim2=3))
    vmapped = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, vmap_axes=0, progress=False)(x1, x2, "ntk")
    torch.testing.assert_close(vmapped, ntk)


@pytest.mark.parametrize("implementation", [0, 2, 3])
def test_ntk_implementations_agree(implementation: int):
    # The same networks (same key), so the estimates agree to rounding.
    init_fn, apply_fn, _ = _mlp()
    x1, x2 = _x(4, 1), _x(3, 2)
    reference = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, progress=False)(x1, x2, "ntk")
    mc = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, implementation=implementation, progress=False)
    torch.testing.assert_close(mc(x1, x2, "ntk"), reference, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_numpy_and_device_are_kept(dtype: torch.dtype):
    init_fn, apply_fn, _ = _mlp()
    x = _x(3).to(dtype)
    mc = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, progress=False)
    k = mc(x, None)
    assert k.nngp.dtype == k.ntk.dtype == dtype
    assert k.nngp.device == x.device
    k_np = mc(x.numpy(), None)
    assert isinstance(k_np.ntk, torch.Tensor) and k_np.ntk.dtype == dtype
    torch.testing.assert_close(k_np.ntk, k.ntk, rtol=0, atol=0)
    off = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, store_on_device=False, progress=False)(x, None, "ntk")
    assert off.device.type == "cpu"
    # float32 estimates are the float64 ones to float32 rounding (the same networks).
    k64 = mc(x.double(), None, "ntk")
    torch.testing.assert_close(k.ntk.double(), k64, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_give_cuda_results():
    init_fn, apply_fn, _ = _mlp()
    x = _x(3)
    mc = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, progress=False)
    k = mc(x.cuda(), None)
    assert k.ntk.device.type == "cuda"
    torch.testing.assert_close(k.ntk.cpu(), mc(x, None, "ntk"), rtol=1e-10, atol=1e-12)


def test_dropout_networks_are_reproducible_and_x2_equal_to_x1_is_x2_none():
    layer = stax.serial(stax.Dense(32), stax.Relu(), stax.Dropout(0.5), stax.Dense(2))
    x = _x(3)
    mc = monte_carlo_kernel_fn(layer.init_fn, layer.apply_fn, 0, 3, progress=False)
    first = mc(x, None)
    again = mc(x, None)
    torch.testing.assert_close(again.nngp, first.nngp, rtol=0, atol=0)  # masks come from key
    same = mc(x, x.clone())
    torch.testing.assert_close(same.nngp, first.nngp, rtol=0, atol=0)
    torch.testing.assert_close(same.ntk, first.ntk, rtol=0, atol=0)


def test_functions_without_dtype_or_rng_keywords_are_accepted():
    layer = _mlp()

    def init_fn(rng, input_shape):  # noqa: ANN001, ANN202
        return layer.init_fn(rng, input_shape, dtype=torch.float32)

    def apply_fn(params, x):  # noqa: ANN001, ANN202
        return layer.apply_fn(params, x)

    x = _x(3)
    k = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, progress=False)(x, None, "ntk")
    assert k.dtype == torch.float64  # float32 parameters were cast to the inputs' dtype


def test_progress_bar_is_optional(capsys: pytest.CaptureFixture[str]):
    init_fn, apply_fn, _ = _mlp()
    monte_carlo_kernel_fn(init_fn, apply_fn, 0, 3, progress=True)(_x(2), None, "ntk")
    assert "Monte Carlo samples" in capsys.readouterr().err
    monte_carlo_kernel_fn(init_fn, apply_fn, 0, 3, progress=False)(_x(2), None, "ntk")
    assert capsys.readouterr().err == ""


def test_is_exported():
    assert tangents.monte_carlo_kernel_fn is monte_carlo_kernel_fn


@pytest.mark.parametrize(
    ("n_samples", "error", "match"),
    [
        (0, ValueError, "must be positive"),
        (-3, ValueError, "must be positive"),
        ([4, 0], ValueError, "must be positive"),
        (2.5, TypeError, "n_samples must be an int"),
        ("10", TypeError, "n_samples must be an int"),
        ([1, 2.0], TypeError, "n_samples must be an int or a non-empty iterable of ints"),
        ([], TypeError, "non-empty"),
        (True, TypeError, "n_samples must be an int"),
    ],
)
def test_bad_n_samples(n_samples, error, match):  # noqa: ANN001
    init_fn, apply_fn, _ = _mlp()
    with pytest.raises(error, match=match):
        monte_carlo_kernel_fn(init_fn, apply_fn, 0, n_samples)


def test_bad_key_get_and_batch_arguments():
    init_fn, apply_fn, _ = _mlp()
    with pytest.raises(TypeError, match="key must be an int seed or a torch.Generator"):
        monte_carlo_kernel_fn(init_fn, apply_fn, "0", 2)
    with pytest.raises(TypeError, match="key must be an int seed or a torch.Generator"):
        monte_carlo_kernel_fn(init_fn, apply_fn, np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="batch_size must be a non-negative integer"):
        monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, batch_size=-1)
    with pytest.raises(ValueError, match="device_count=4 is not supported"):
        monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2, device_count=4)
    mc = monte_carlo_kernel_fn(init_fn, apply_fn, 0, 2)
    with pytest.raises(ValueError, match=r"get='cov1' is not supported; Monte Carlo estimates 'nngp' and 'ntk'"):
        mc(_x(2), None, "cov1")
    with pytest.raises(ValueError, match="is not supported"):
        mc(_x(2), None, ())
    with pytest.raises(TypeError, match="x1 must be a torch.Tensor or a numpy array"):
        mc([[1.0, 2.0]], None, "nngp")


# ---------------------------------------------------------------------- convergence

#: Samples per estimate. Per sample, the empirical kernels of a width-n network spread by
#: O(1/√n) of the kernel (their hidden units are averaged), so 64 samples at n ≥ 128 pin
#: the mean to a few percent (5 SE); see the "teeth" check in `_check_converges`.
N_SAMPLES = 64
#: Readout width for the NNGP estimates: f(x1)·f(x2)/out averages `out` readouts, which
#: cuts the readout's own sampling noise (relative variance 2/out per sample); the NNGP
#: needs only forward passes, so a wide readout is cheap. The NTK uses a narrow one.
NNGP_OUT, NTK_OUT = 256, 4
#: Inputs per estimate (all pairs, diagonal included, are checked).
N_INPUTS = 4
#: Allowed standard errors: for Gaussian errors P(|z| > 5) = 6e-7 per entry, so the
#: ~2 × 10 distinct entries × 45 networks stay clear of chance failures with a fixed seed
#: set; the SE itself is estimated from the same samples.
Z = 5.0
#: Finite-width bias allowance C · (depth − 1) / width of the kernel's scale. The mean of
#: the empirical NNGP/NTK of a depth-L network differs from its limit by O((L − 1)/n)
#: (Yaida 2020, "Non-Gaussian processes and neural networks at finite widths"; Hanin &
#: Nica 2019), with coefficients set by fourth moments of the activations, of order one
#: to a few for the networks here: measured with 400–1000 samples at widths 8 and 32,
#: |mean − limit| · width / ((depth − 1) · scale) stays below 1.3 for the deep networks
#: of `networks.py` (repeat, LayerNorm, residual, FanInSum, two hidden layers).
#: C = 4 leaves a factor 3; `test_finite_width_bias_shrinks_with_width` checks that the
#: bias is real and shrinks.
C_BIAS = 4.0


def _samples(net: Net, width: int, out: int, x: torch.Tensor, get: str, n: int, seed: int) -> torch.Tensor:
    """The n individual samples ``(n, N, N)`` of one empirical kernel, recovered from the
    running means that ``monte_carlo_kernel_fn`` yields: sample_k = k m_k − (k − 1) m_{k−1}."""
    layer = net.build(width, out)
    mc = monte_carlo_kernel_fn(layer.init_fn, layer.apply_fn, seed, range(1, n + 1), progress=False)
    means = torch.stack(list(mc(x, None, get)))
    counts = torch.arange(1, n + 1, dtype=x.dtype).reshape(-1, 1, 1)
    totals = counts * means
    return torch.cat([totals[:1], totals[1:] - totals[:-1]])


def _check_converges(net: Net, get: str, width: int, out: int, n: int, seed: int = 0) -> None:
    x = inputs(net, N_INPUTS, seed=3)
    samples = _samples(net, width, out, x, get, n, seed)
    mean = samples.mean(0)
    standard_error = samples.std(0, correction=1) / math.sqrt(n)
    analytic = net.build(width, out).kernel_fn(x, None, get)
    scale = float(analytic.abs().max())
    bias = C_BIAS * (net.depth - 1) / width * scale
    tolerance = Z * standard_error + bias + 1e-12 * scale
    error = (mean - analytic).abs()
    worst = int(torch.argmax(error / tolerance))
    assert bool((error <= tolerance).all()), (
        f"{net.id} {get}: |MC mean − analytic| = {error.flatten()[worst]:.3g} > "
        f"{Z} SE + bias = {tolerance.flatten()[worst]:.3g} (SE {standard_error.flatten()[worst]:.3g}, "
        f"analytic {analytic.flatten()[worst]:.4g}, mean {mean.flatten()[worst]:.4g})"
    )
    # The test has teeth: the tolerance is a fraction of the kernel (the loosest, 0.3, is
    # Hermite(3), whose products of cubics have heavy tails).
    assert float(tolerance.max()) < 0.35 * scale, f"{net.id} {get}: tolerance {float(tolerance.max()):.3g} too loose"


@pytest.mark.parametrize("net", FINITE_NETWORKS, ids=ids)
def test_monte_carlo_nngp_converges_to_kernel_fn(net: Net):
    _check_converges(net, "nngp", net.mc_width, out=NNGP_OUT, n=N_SAMPLES)


@pytest.mark.parametrize("net", FINITE_NETWORKS, ids=ids)
def test_monte_carlo_ntk_converges_to_kernel_fn(net: Net):
    _check_converges(net, "ntk", net.mc_width, out=NTK_OUT, n=N_SAMPLES)


def test_finite_width_bias_shrinks_with_width():
    """At width 8 a depth-3 network's mean NNGP is measurably off the limit (> 5 SE);
    at width 128 the error is much smaller and within the bias allowance."""
    net = next(n for n in FINITE_NETWORKS if n.id == "repeat")
    x = inputs(net, N_INPUTS, seed=3)
    errors = {}
    for width, n in ((8, 400), (128, 64)):
        samples = _samples(net, width, NNGP_OUT, x, "nngp", n, seed=1)
        analytic = net.build(width, NNGP_OUT).kernel_fn(x, None, "nngp")
        scale = float(analytic.abs().max())
        error = (samples.mean(0) - analytic).abs()
        standard_error = samples.std(0) / math.sqrt(n)
        errors[width] = float(error.max()) / scale
        if width == 8:
            assert bool((error > Z * standard_error).any()), "no finite-width bias detected at width 8"
        else:
            assert bool((error <= Z * standard_error + C_BIAS * (net.depth - 1) / width * scale).all())
    assert errors[128] < errors[8] / 3, errors
