"""A battery of bad and adversarial calls of the `stax` entry points (issue #12).

``kernel_fn``, ``apply_fn``, ``init_fn``, ``to_module`` and its forward pass, and the layer
constructors, given what a new user might pass: wrong dtypes, devices, ranks and widths,
NaN/inf, empty batches, typos in keyword arguments, parameters of another network,
impossible combinations. Each must raise a ``TypeError`` or ``ValueError`` whose message
names the call and the argument and says what was expected (checked by a regular
expression), never a raw error from inside torch, a hang, or a silently wrong result.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from tangents import stax

D = 6


def fc() -> stax.Layer:
    return stax.serial(stax.Dense(16, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(1))


def cnn() -> stax.Layer:
    return stax.serial(
        stax.Conv(4, (3, 3), padding="SAME"), stax.Relu(), stax.AvgPool((2, 2)), stax.Flatten(), stax.Dense(1)
    )


def graph() -> stax.Layer:
    """A graph network on (N, C, V) inputs; ``pattern=(A1, A2)`` are (N, V, V) adjacencies."""
    return stax.serial(stax.Dense(8, channel_axis=1), stax.Aggregate(), stax.GlobalAvgPool(), stax.Dense(1))


def residual(fan_in: Callable[[], stax.Layer]) -> stax.Layer:
    return stax.serial(stax.FanOut(2), stax.parallel(stax.Dense(3), stax.Dense(5)), fan_in())


def x(n: int = 4, d: int = D, **kwargs: Any) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), **kwargs)


def img(n: int = 3, c: int = 2, h: int = 6, w: int = 6) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))


def with_value(value: float, where: tuple[int, int] = (1, 2)) -> torch.Tensor:
    t = x()
    t[where] = value
    return t


def params(layer: stax.Layer | None = None, shape: tuple[int, ...] = (-1, D), **kwargs: Any) -> Any:
    return (layer or fc()).init_fn(0, shape, **kwargs)[1]


def module(**kwargs: Any) -> torch.nn.Module:
    return fc().to_module((-1, D), seed=0, **kwargs)


def kernel() -> Any:
    return fc().kernel_fn(x(), None)


# (id, call, exception type, regular expression the message must match)
CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    # ------------------------------------------------------------------ kernel_fn: inputs
    ("kernel_meta_x1", lambda: fc().kernel_fn(torch.empty(4, D, device="meta")), ValueError,
     r"kernel_fn: x1 is on the 'meta' device.*create it on a real device"),
    ("kernel_meta_x2", lambda: fc().kernel_fn(x(), torch.empty(3, D, device="meta")), ValueError,
     r"kernel_fn: x2 is on the 'meta' device"),
    ("kernel_int64", lambda: fc().kernel_fn(torch.ones(4, D, dtype=torch.int64)), TypeError,
     r"kernel_fn: x1 must be float32 or float64, got integer dtype torch.int64; convert it first, e.g. x1.double\(\)"),
    ("kernel_int32_x2", lambda: fc().kernel_fn(x(), torch.ones(4, D, dtype=torch.int32)), TypeError,
     r"kernel_fn: x2 must be float32 or float64, got integer dtype torch.int32"),
    ("kernel_bool", lambda: fc().kernel_fn(torch.ones(4, D, dtype=torch.bool)), TypeError,
     r"kernel_fn: x1 must be float32 or float64, got boolean dtype torch.bool"),
    ("kernel_float16", lambda: fc().kernel_fn(torch.ones(4, D, dtype=torch.float16)), TypeError,
     r"kernel_fn: x1 must be float32 or float64, got low-precision dtype torch.float16"),
    ("kernel_bfloat16", lambda: fc().kernel_fn(torch.ones(4, D, dtype=torch.bfloat16)), TypeError,
     r"got low-precision dtype torch.bfloat16"),
    ("kernel_complex64", lambda: fc().kernel_fn(torch.ones(4, D, dtype=torch.complex64)), TypeError,
     r"kernel_fn: x1 must be float32 or float64, got complex dtype torch.complex64"),
    ("kernel_complex128_x2", lambda: fc().kernel_fn(x(), torch.ones(2, D, dtype=torch.complex128)), TypeError,
     r"x2 must be float32 or float64, got complex dtype"),
    ("kernel_numpy_float16", lambda: fc().kernel_fn(np.ones((4, D), dtype=np.float16)), TypeError,
     r"x1 must be float32 or float64, got low-precision dtype torch.float16"),
    ("kernel_numpy_int", lambda: fc().kernel_fn(np.ones((4, D), dtype=np.int64)), TypeError,
     r"x1 must be float32 or float64, got integer dtype"),
    ("kernel_numpy_object", lambda: fc().kernel_fn(np.array([[1.0, "a"]], dtype=object)), TypeError,
     r"kernel_fn: x1 must be a numeric array, got a numpy array of dtype object"),
    ("kernel_nan", lambda: fc().kernel_fn(with_value(float("nan"))), ValueError,
     r"kernel_fn: x1 contains 1 NaN or infinite value\(s\) \(shape \(4, 6\)\).*mask_constant"),
    ("kernel_inf", lambda: fc().kernel_fn(with_value(float("inf"))), ValueError,
     r"kernel_fn: x1 contains 1 NaN or infinite value"),
    ("kernel_minus_inf_x2", lambda: fc().kernel_fn(x(), with_value(-float("inf"))), ValueError,
     r"kernel_fn: x2 contains 1 NaN or infinite value"),
    ("kernel_all_nan", lambda: fc().kernel_fn(torch.full((4, D), float("nan"))), ValueError,
     r"x1 contains 24 NaN or infinite value"),
    ("kernel_empty_batch", lambda: fc().kernel_fn(torch.empty(0, D)), ValueError,
     r"kernel_fn: x1 is empty \(shape \(0, 6\)\); every axis needs at least one entry"),
    ("kernel_empty_features", lambda: fc().kernel_fn(torch.empty(4, 0)), ValueError, r"x1 is empty \(shape \(4, 0\)\)"),
    ("kernel_empty_x2", lambda: fc().kernel_fn(x(), torch.empty(0, D)), ValueError, r"x2 is empty"),
    ("kernel_1d", lambda: fc().kernel_fn(torch.ones(D)), ValueError,
     r"kernel_fn: x1 must be at least 2-D \(a batch axis and a feature axis\), got shape \(6,\); for a single example use x1\[None\]"),
    ("kernel_0d", lambda: fc().kernel_fn(torch.tensor(1.0)), ValueError, r"x1 must be at least 2-D.*got shape \(\)"),
    ("kernel_python_list", lambda: fc().kernel_fn([[1.0] * D] * 2), TypeError,
     r"kernel_fn: x1 must be a torch.Tensor or a numpy array, got float"),
    ("kernel_string", lambda: fc().kernel_fn("x"), TypeError, r"x1 must be a torch.Tensor or a numpy array, got str"),
    ("kernel_none", lambda: fc().kernel_fn(None), TypeError, r"x1 must be a torch.Tensor or a numpy array, got NoneType"),
    ("kernel_x2_width", lambda: fc().kernel_fn(x(), x(3, D + 1)), ValueError,
     r"kernel_fn: x1 and x2 must have the same shape apart from the batch axis, got \(4, 6\) and \(3, 7\)"),
    ("kernel_x2_rank", lambda: fc().kernel_fn(x(), torch.ones(3, 2, 3)), ValueError,
     r"x1 and x2 must have the same shape apart from the batch axis"),
    ("kernel_list_and_tensor", lambda: fc().kernel_fn([x()], x()), ValueError,
     r"x1 is a list of inputs, so x2 must be None or a list of the same length"),
    ("kernel_empty_list", lambda: fc().kernel_fn([]), ValueError, r"x1 is an empty list"),
    ("kernel_cnn_2d", lambda: cnn().kernel_fn(x()), ValueError, r"Conv: a 2-D convolution needs inputs with 2 spatial axes"),
    ("kernel_cnn_3d", lambda: cnn().kernel_fn(torch.ones(3, 6, 6)), ValueError, r"needs inputs with 2 spatial axes.*has 1"),
    ("kernel_cnn_5d", lambda: cnn().kernel_fn(torch.ones(3, 2, 6, 6, 2)), ValueError, r"needs inputs with 2 spatial axes.*has 3"),
    ("kernel_activation_on_inputs", lambda: stax.Relu().kernel_fn(x()), ValueError,
     r"Relu: the input must be Gaussian \(a Dense or Conv layer must come before an activation\)"),
    ("kernel_fanin_sum_widths", lambda: residual(stax.FanInSum).kernel_fn(x()), ValueError,
     r"FanInSum: all branches must have the same output shape, got \[\(4, 3\), \(4, 5\)\]"),
    ("kernel_fanin_prod_widths", lambda: residual(stax.FanInProd).kernel_fn(x()), ValueError,
     r"FanInProd: all branches must have the same output shape"),
    # ------------------------------------------------------------------ kernel_fn: arguments
    ("kernel_typo_keyword", lambda: fc().kernel_fn(x(), None, "ntk", diagonal_spatal=True), TypeError,
     r"kernel_fn: unexpected keyword argument 'diagonal_spatal' \(did you mean 'diagonal_spatial'\?\)\. kernel_fn takes "
     r"get, diagonal_batch, diagonal_spatial, compile and mask_constant"),
    ("kernel_unknown_keyword", lambda: fc().kernel_fn(x(), None, "ntk", solver="cg"), TypeError,
     r"kernel_fn: unexpected keyword argument 'solver'.*no layer would use it"),
    ("kernel_keyword_of_absent_layer", lambda: fc().kernel_fn(x(), None, pattern=(None, None)), TypeError,
     r"unexpected keyword argument 'pattern'.*'pattern' is taken by Aggregate, which this network does not contain"),
    ("kernel_apply_keyword", lambda: fc().kernel_fn(x(), None, rng=torch.Generator()), TypeError,
     r"kernel_fn: unexpected keyword argument 'rng'"),
    ("kernel_graph_typo", lambda: graph().kernel_fn(torch.ones(2, 4, 3), None, patern=(None, None)), TypeError,
     r"unexpected keyword argument 'patern' \(did you mean 'pattern'\?\).*pattern \(for Aggregate\)"),
    ("kernel_kernel_with_typo", lambda: stax.Relu().kernel_fn(stax.Dense(3).kernel_fn(x()), diagonal_btach=True), TypeError,
     r"unexpected keyword argument 'diagonal_btach' \(did you mean 'diagonal_batch'\?\)"),
    ("kernel_get_unknown", lambda: fc().kernel_fn(x(), None, "nkt"), ValueError,
     r"kernel_fn: unknown get name 'nkt'; valid names are nngp, ntk"),
    ("kernel_get_int", lambda: fc().kernel_fn(x(), None, 3), TypeError,
     r"kernel_fn: get must be None, a name such as 'ntk' or a tuple of names, got int"),
    ("kernel_get_empty", lambda: fc().kernel_fn(x(), None, ()), ValueError, r"get must be None, a name or a non-empty tuple"),
    ("kernel_get_tuple_bad", lambda: fc().kernel_fn(x(), None, ("ntk", "foo")), ValueError, r"unknown get name 'foo'"),
    ("kernel_compile_str", lambda: fc().kernel_fn(x(), None, compile="yes"), TypeError,
     r"kernel_fn: compile must be None, True or False, got 'yes'"),
    ("kernel_diagonal_batch_str", lambda: fc().kernel_fn(x(), None, diagonal_batch="yes"), TypeError,
     r"kernel_fn: diagonal_batch must be None, True or False, got 'yes'"),
    ("kernel_diagonal_spatial_int", lambda: fc().kernel_fn(x(), None, diagonal_spatial=1), TypeError,
     r"kernel_fn: diagonal_spatial must be None, True or False, got 1"),
    ("kernel_diagonal_spatial_with_pooling", lambda: cnn().kernel_fn(img(), None, diagonal_spatial=True), ValueError,
     r"diagonal_spatial=True was requested, but a layer of this network.*needs the full location-location"),
    ("kernel_mask_constant_str", lambda: fc().kernel_fn(x(), None, mask_constant="a"), TypeError,
     r"kernel_fn: mask_constant must be None or a number \(NaN and inf allowed\), got 'a'"),
    ("kernel_kernel_and_x2", lambda: stax.Relu().kernel_fn(stax.Dense(3).kernel_fn(x()), x()), ValueError,
     r"x2 must be None when a Kernel is given"),
    ("kernel_kernel_and_mask", lambda: stax.Relu().kernel_fn(stax.Dense(3).kernel_fn(x()), mask_constant=0.0), ValueError,
     r"mask_constant=0.0 was given with a Kernel"),
    # ------------------------------------------------------------------ apply_fn
    ("apply_meta_x", lambda: fc().apply_fn(params(), torch.empty(4, D, device="meta")), ValueError,
     r"apply_fn: x is on the 'meta' device, which holds shapes but no values"),
    ("apply_float32_params_float64_x", lambda: fc().apply_fn(params(dtype=torch.float32), x()), TypeError,
     r"apply_fn: x is torch.float64 but the parameters are torch.float32; use one dtype for both: "
     r"x.to\(torch.float32\), or parameters in torch.float64 \(init_fn\(..., dtype=x.dtype\)\)"),
    ("apply_float64_params_float32_x", lambda: fc().apply_fn(params(), x(dtype=torch.float32)), TypeError,
     r"x is torch.float32 but the parameters are torch.float64"),
    ("apply_int_x", lambda: fc().apply_fn(params(), torch.ones(4, D, dtype=torch.int64)), TypeError,
     r"apply_fn: x must be a floating tensor, got integer dtype torch.int64"),
    ("apply_complex_x", lambda: fc().apply_fn(params(), torch.ones(4, D, dtype=torch.complex128)), TypeError,
     r"x must be a floating tensor, got complex dtype"),
    ("apply_bool_x", lambda: fc().apply_fn(params(), torch.ones(4, D, dtype=torch.bool)), TypeError,
     r"x must be a floating tensor, got boolean dtype"),
    ("apply_float16_x", lambda: fc().apply_fn(params(), torch.ones(4, D, dtype=torch.float16)), TypeError,
     r"x is torch.float16 but the parameters are torch.float64"),
    ("apply_nan_x", lambda: fc().apply_fn(params(), with_value(float("nan"))), ValueError,
     r"apply_fn: x contains 1 NaN or infinite value\(s\) \(shape \(4, 6\)\), so the outputs would be NaN"),
    ("apply_inf_x", lambda: fc().apply_fn(params(), with_value(float("inf"))), ValueError, r"x contains 1 NaN or infinite"),
    ("apply_wrong_width", lambda: fc().apply_fn(params(), x(4, D + 1)), ValueError,
     r"apply_fn: x has shape \(4, 7\), but the parameters were made for inputs of another shape: "
     r"params\[0\]\[0\] \(W of Dense\(16.*\) has shape \(6, 16\) where inputs of shape \(4, 7\) need \(7, 16\)"),
    ("apply_missing_batch_axis", lambda: fc().apply_fn(params(), torch.ones(D)), ValueError,
     r"x has shape \(6,\), but the parameters were made for inputs of another shape: params\[0\]\[1\] \(b of Dense"),
    ("apply_cnn_channels", lambda: cnn().apply_fn(params(cnn(), (-1, 2, 6, 6)), img(c=3)), ValueError,
     r"x has shape \(3, 3, 6, 6\).*W of Conv.*has shape \(4, 2, 3, 3\) where inputs of shape \(3, 3, 6, 6\) need \(4, 3, 3, 3\)"),
    ("apply_cnn_image_size", lambda: cnn().apply_fn(params(cnn(), (-1, 2, 6, 6)), img(h=8, w=8)), ValueError,
     r"x has shape \(3, 2, 8, 8\).*params\[4\]\[0\] \(W of Dense\(1.*has shape \(100, 1\).*need \(196, 1\)"),
    ("apply_attention_channels_last", lambda: stax.GlobalSelfAttention(4, 4, 4, 1).apply_fn(
        params(stax.GlobalSelfAttention(4, 4, 4, 1), (-1, 3, 5)), torch.randn(2, 5, 3)), ValueError,
     r"apply_fn: x has shape \(2, 5, 3\), but the parameters were made for .* The layer says: GlobalSelfAttention: "
     r"the input has 5 channels on axis 1.*pass channel_axis=-1 for \(N, L, C\)"),
    ("apply_cnn_flat_input", lambda: cnn().apply_fn(params(cnn(), (-1, 2, 6, 6)), x()), ValueError,
     r"apply_fn: the network cannot run on x of shape \(4, 6\): Conv: expects 4-D inputs laid out as 'NCHW'"),
    ("apply_params_none", lambda: fc().apply_fn(None, x()), ValueError,
     r"apply_fn: params must be the parameters of serial: a tuple of 3 entries \(one per layer, as init_fn returns them\), got None"),
    ("apply_params_missing_layer", lambda: fc().apply_fn(params()[:2], x()), ValueError,
     r"params must be the parameters of serial: a tuple of 3 entries.*got a tuple of 2 entries"),
    ("apply_params_extra_layer", lambda: fc().apply_fn(params() + ((),), x()), ValueError, r"got a tuple of 4 entries"),
    ("apply_params_of_another_network", lambda: fc().apply_fn(params(cnn(), (-1, 2, 6, 6)), x()), ValueError,
     r"apply_fn: params must be the parameters of serial: a tuple of 3 entries.*got a tuple of 5 entries"),
    ("apply_params_for_activation", lambda: fc().apply_fn((params()[0], params()[0], params()[2]), x()), ValueError,
     r"apply_fn: params\[1\] belongs to Relu, which has no parameters, so it must be \(\)"),
    ("apply_params_leaf_str", lambda: fc().apply_fn((("W", None), (), params()[2]), x()), TypeError,
     r"apply_fn: params\[0\] \(Dense.*'s W\) must be a torch.Tensor or None, got str"),
    ("apply_params_mixed_dtypes", lambda: fc().apply_fn((params()[0], (), params(dtype=torch.float32)[2]), x()), TypeError,
     r"apply_fn: the parameters mix dtypes/devices"),
    ("apply_typo_keyword", lambda: fc().apply_fn(params(), x(), rgn=None), TypeError,
     r"apply_fn: unexpected keyword argument 'rgn' \(did you mean 'rng'\?\)\. apply_fn takes mask_constant, rng and mode"),
    ("apply_unknown_keyword", lambda: fc().apply_fn(params(), x(), training=True), TypeError,
     r"unexpected keyword argument 'training'"),
    ("apply_pattern_without_graph", lambda: fc().apply_fn(params(), x(), pattern=None), TypeError,
     r"'pattern' is taken by Aggregate, which this network does not contain"),
    ("apply_mode_eval", lambda: fc().apply_fn(params(), x(), mode="eval"), ValueError,
     r"apply_fn: mode must be 'train' or 'test', got 'eval'"),
    ("apply_rng_int", lambda: fc().apply_fn(params(), x(), rng=0), TypeError,
     r"apply_fn: rng must be a torch.Generator or None \(torch's global RNG\), got int"),
    ("apply_python_list", lambda: fc().apply_fn(params(), [[1.0] * D]), TypeError,
     r"apply_fn: x must be a torch.Tensor \(or a numpy array, or a list of them"),
    ("apply_string", lambda: fc().apply_fn(params(), "x"), TypeError, r"x must be a torch.Tensor.*got str"),
    ("apply_mask_constant_str", lambda: fc().apply_fn(params(), x(), mask_constant="a"), TypeError,
     r"apply_fn: mask_constant must be None or a number"),
    # ------------------------------------------------------------------ init_fn
    ("init_rng_str", lambda: fc().init_fn("0", (-1, D)), TypeError,
     r"init_fn: rng must be an int seed, a torch.Generator or None, got str"),
    ("init_rng_float", lambda: fc().init_fn(0.5, (-1, D)), TypeError, r"rng must be an int seed.*got float"),
    ("init_rng_bool", lambda: fc().init_fn(True, (-1, D)), TypeError, r"rng must be an int seed.*got bool"),
    ("init_shape_str", lambda: fc().init_fn(0, "abc"), TypeError, r"init_fn: input_shape must be a tuple of ints"),
    ("init_shape_floats", lambda: fc().init_fn(0, (-1, 6.0)), TypeError, r"input_shape must be a tuple of ints.*\(-1, 6.0\)"),
    ("init_shape_zero", lambda: fc().init_fn(0, (-1, 0)), ValueError,
     r"init_fn: input_shape \(-1, 0\) has size 0; every axis needs a positive size, or -1"),
    ("init_shape_negative", lambda: fc().init_fn(0, (-1, -6)), ValueError, r"input_shape \(-1, -6\) has size -6"),
    ("init_dtype_int", lambda: fc().init_fn(0, (-1, D), dtype=torch.int64), TypeError,
     r"init_fn: dtype must be a floating torch.dtype such as torch.float32 or torch.float64.*got torch.int64"),
    ("init_dtype_string", lambda: fc().init_fn(0, (-1, D), dtype="float32"), TypeError, r"dtype must be a floating torch.dtype.*'float32'"),
    ("init_device_unknown", lambda: fc().init_fn(0, (-1, D), device="gpu0"), ValueError,
     r"init_fn: device must be a torch.device or a name such as 'cpu' or 'cuda:0', got 'gpu0'"),
    ("init_cnn_flat_shape", lambda: cnn().init_fn(0, (-1, D)), ValueError, r"Conv: expects 4-D inputs laid out as 'NCHW'"),
    ("init_fanin_sum_widths", lambda: residual(stax.FanInSum).init_fn(0, (-1, D)), ValueError,
     r"FanInSum: all branches must have the same output shape, got \[\(-1, 3\), \(-1, 5\)\]; give the branches' last layers the same width"),
    ("init_fanin_prod_widths", lambda: residual(stax.FanInProd).init_fn(0, (-1, D)), ValueError, r"FanInProd: all branches must have the same"),
    # ------------------------------------------------------------------ to_module and its forward pass
    ("module_float32_x_float64", lambda: module(dtype=torch.float32)(x()), TypeError,
     r"model\(x\): x is torch.float64 but the parameters are torch.float32.*model.to\(x.dtype\)"),
    ("module_wrong_width", lambda: module()(x(4, D - 1)), ValueError, r"model\(x\): x has shape \(4, 5\), but the parameters were made"),
    ("module_meta_x", lambda: module()(torch.empty(4, D, device="meta")), ValueError, r"model\(x\): x is on the 'meta' device"),
    ("module_nan_x", lambda: module()(with_value(float("nan"))), ValueError, r"model\(x\): x contains 1 NaN"),
    ("module_int_x", lambda: module()(torch.ones(4, D, dtype=torch.int32)), TypeError, r"model\(x\): x must be a floating tensor"),
    ("module_typo_keyword", lambda: module()(x(), rnq=None), TypeError, r"model\(x\): unexpected keyword argument 'rnq' \(did you mean 'rng'\?\)"),
    ("module_seed_str", lambda: fc().to_module((-1, D), seed="0"), TypeError, r"rng must be an int seed"),
    ("module_dtype_int", lambda: fc().to_module((-1, D), dtype=torch.int32), TypeError, r"dtype must be a floating torch.dtype"),
    # ------------------------------------------------------------------ constructors and combinators
    ("dense_zero_width", lambda: stax.Dense(0), ValueError, r"Dense"),
    ("dense_nan_std", lambda: stax.Dense(4, W_std=float("nan")), ValueError, r"Dense: W_std must be a finite number, got nan"),
    ("dense_parameterization", lambda: stax.Dense(4, parameterization="nt"), ValueError,
     r"Dense: parameterization must be 'ntk' or 'standard', got 'nt'"),
    ("dropout_rate_zero", lambda: stax.Dropout(0.0), ValueError, r"Dropout: rate is the probability to KEEP a unit"),
    ("serial_of_triple", lambda: stax.serial(tuple(stax.Dense(3))), TypeError,
     r"serial: argument 0 must be a tangents.stax layer.*not an \(init_fn, apply_fn, kernel_fn\) tuple"),
    ("fan_out_zero", lambda: stax.FanOut(0), ValueError, r"FanOut: num must be a positive integer, got 0"),
    ("numerical_degree_zero", lambda: stax.ElementwiseNumerical(torch.tanh, deg=0), ValueError,
     r"ElementwiseNumerical: deg must be a positive integer"),
    ("hermite_negative", lambda: stax.Hermite(-1), ValueError, r"Hermite: degree must be a non-negative integer, got -1"),
    ("repeat_negative", lambda: stax.repeat(stax.Relu(), -1), ValueError, r"repeat: n must be a non-negative integer, got -1"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(case):
    _, call, error, pattern = case
    with pytest.raises(error, match=pattern):
        call()


def test_the_battery_is_broad():
    """About a hundred distinct cases over every entry point (the issue's held-back battery
    had about a hundred)."""
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES)
    for prefix in ("kernel_", "apply_", "init_", "module_"):
        assert sum(c[0].startswith(prefix) for c in CASES) >= 8, prefix


def test_messages_name_the_entry_point():
    """Every error about a call of an entry point starts with that entry point (or the layer
    whose rule was broken), so the user knows which argument to look at."""
    starts = re.compile(r"^(kernel_fn|apply_fn|init_fn|model\(x\)|[A-Z][A-Za-z_]*|serial|repeat): ")
    for name, call, error, _ in CASES:
        with pytest.raises(error) as info:
            call()
        assert starts.match(str(info.value)), (name, str(info.value))


# ---------------------------------------------------------------------- what must keep working


def test_legitimate_edge_cases_still_work():
    """Not errors: an empty batch for the finite network (an empty output, as torch.nn), numpy
    inputs, float32 with float64 (promoted) for kernels, meta parameters with meta inputs
    (shapes only), unbatched inputs of a network without parameters (elementwise), and the
    documented keywords (rng/mode for any network, pattern for graphs, mask_constant)."""
    layer = fc()
    p = params()
    assert layer.apply_fn(p, torch.empty(0, D)).shape == (0, 1)
    assert layer.apply_fn(p, x().numpy()).shape == (4, 1)
    assert layer.kernel_fn(x(), x(3, dtype=torch.float32), "ntk").dtype == torch.float64
    meta = layer.init_fn(0, (-1, D), device="meta")[1]
    assert layer.apply_fn(meta, torch.empty(4, D, device="meta")).shape == (4, 1)
    assert stax.Relu().apply_fn((), torch.linspace(-1, 1, 5)).shape == (5,)
    out = layer.apply_fn(p, x(), rng=torch.Generator().manual_seed(0), mode="test")
    torch.testing.assert_close(out, layer.apply_fn(p, x()), rtol=0, atol=0)
    adjacency = torch.ones(2, 3, 3)
    k = graph().kernel_fn(torch.randn(2, 4, 3), None, "ntk", pattern=(adjacency, adjacency))
    assert k.shape == (2, 2) and torch.isfinite(k).all()
    padded = x()
    padded[0, -2:] = float("nan")
    assert torch.isfinite(layer.kernel_fn(padded, None, "ntk", mask_constant=float("nan"))).all()
