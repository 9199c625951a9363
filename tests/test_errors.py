"""Bad input to ``kernel_fn``, ``apply_fn``, ``init_fn`` and layer constructors.

Every mistake gets a ValueError or TypeError whose message names the problem (and, where
there is one, the fix), never a raw torch error deep inside or a silently wrong number.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tangents import stax


def _net() -> stax.Layer:
    return stax.serial(stax.Dense(8, W_std=1.5, b_std=0.1), stax.Relu(), stax.Dense(1))


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


# ---------------------------------------------------------------------- kernel_fn inputs


@pytest.mark.parametrize("x", [_x(4), torch.tensor(1.0, dtype=torch.float64)], ids=["1d", "0d"])
def test_inputs_need_a_batch_and_a_feature_axis(x: torch.Tensor):
    with pytest.raises(ValueError, match=r"x1 must be at least 2-D \(a batch axis and a feature axis\).*x1\[None\]"):
        _net().kernel_fn(x)


def test_second_batch_must_have_at_least_two_axes_too():
    with pytest.raises(ValueError, match=r"x2 must be at least 2-D"):
        _net().kernel_fn(_x(3, 4), _x(4))


def test_x1_and_x2_feature_sizes_must_agree():
    with pytest.raises(ValueError, match=r"x1 and x2 must have the same shape apart from the batch axis, got \(3, 4\) and \(2, 5\)"):
        _net().kernel_fn(_x(3, 4), _x(2, 5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", ["x1", "x2"])
def test_nan_and_inf_inputs(bad: float, which: str):
    x1, x2 = _x(3, 4), _x(2, 4)
    (x1 if which == "x1" else x2)[1, 2] = bad
    with pytest.raises(ValueError, match=rf"{which} contains 1 NaN or infinite value\(s\)"):
        _net().kernel_fn(x1, x2)


@pytest.mark.parametrize(
    ("x", "kind"),
    [
        (torch.ones(3, 4, dtype=torch.int64), "integer dtype torch.int64"),
        (torch.ones(3, 4, dtype=torch.int32), "integer dtype torch.int32"),
        (torch.ones(3, 4, dtype=torch.complex128), "complex dtype torch.complex128"),
        (torch.ones(3, 4, dtype=torch.bool), "boolean dtype torch.bool"),
        (torch.ones(3, 4, dtype=torch.float16), "low-precision dtype torch.float16"),
        (np.ones((3, 4), dtype=np.int64), "integer dtype torch.int64"),
    ],
    ids=["int64", "int32", "complex", "bool", "float16", "numpy-int"],
)
def test_non_float_dtypes(x, kind: str):  # noqa: ANN001
    with pytest.raises(TypeError, match=rf"x1 must be float32 or float64, got {kind}; convert it first"):
        _net().kernel_fn(x)


def test_non_array_inputs():
    with pytest.raises(TypeError, match=r"must be a torch.Tensor or a numpy array"):
        _net().kernel_fn("abc")
    with pytest.raises(TypeError, match=r"numeric array, got a numpy array of dtype object"):
        _net().kernel_fn(np.array([[1.0, None]], dtype=object))


@pytest.mark.parametrize(
    ("x1", "x2", "name"),
    [(_x(0, 4), None, "x1"), (_x(3, 0), None, "x1"), (_x(3, 4), _x(0, 4), "x2")],
    ids=["empty-batch", "no-features", "empty-x2"],
)
def test_empty_batches(x1: torch.Tensor, x2: torch.Tensor | None, name: str):
    with pytest.raises(ValueError, match=rf"{name} is empty \(shape .*\); every axis needs at least one entry"):
        _net().kernel_fn(x1, x2)


def test_kernel_and_x2_together():
    layer = _net()
    with pytest.raises(ValueError, match=r"x2 must be None when a Kernel is given"):
        layer.kernel_fn(layer.kernel_fn(_x(3, 4)), _x(3, 4))


# ---------------------------------------------------------------------- get


@pytest.mark.parametrize("get", ["ntkk", ("nngp", "foo"), ["cov1", "NTK"]])
def test_unknown_get_names(get):  # noqa: ANN001
    with pytest.raises(ValueError, match=r"unknown get name '(ntkk|foo|NTK)'; valid names are nngp, ntk, cov1"):
        _net().kernel_fn(_x(3, 4), None, get)


def test_get_of_the_wrong_type():
    with pytest.raises(ValueError, match=r"get must be None, a name or a non-empty tuple of names, got \(\)"):
        _net().kernel_fn(_x(3, 4), None, ())
    with pytest.raises(TypeError, match=r"get must be None, a name such as 'ntk' or a tuple of names, got int"):
        _net().kernel_fn(_x(3, 4), None, 3)


# ---------------------------------------------------------------------- network structure


@pytest.mark.parametrize("activation", ["Relu", "Erf", "Abs", "Gelu", "Tanh", "Sin"])
def test_activation_without_an_affine_layer_before_it(activation: str):
    net = stax.serial(getattr(stax, activation)(), stax.Dense(1))
    with pytest.raises(ValueError, match=r"the input must be Gaussian \(a Dense or Conv layer must come before an activation\)"):
        net.kernel_fn(_x(3, 4))


def test_two_activations_in_a_row():
    net = stax.serial(stax.Dense(8), stax.Relu(), stax.Erf(), stax.Dense(1))
    with pytest.raises(ValueError, match=r"Erf: the input must be Gaussian \(a Dense or Conv layer must come before"):
        net.kernel_fn(_x(3, 4))


def test_repeat_of_a_shape_changing_layer():
    net = stax.repeat(stax.Dense(3), 2)
    message = r"repeat: the repeated layer maps shape \(.*, 4\) to \(.*, 3\), but repeat needs it to keep the shape; use stax.serial"
    with pytest.raises(ValueError, match=message):
        net.kernel_fn(_x(5, 4))
    with pytest.raises(ValueError, match=message):
        net.init_fn(0, (-1, 4))
    # A shape-keeping layer repeated is fine, and repeating zero times is the identity.
    stax.repeat(stax.serial(stax.Dense(4), stax.Relu()), 2).kernel_fn(_x(5, 4))
    stax.repeat(stax.Dense(3), 0).kernel_fn(_x(5, 4))


def test_fan_in_sum_of_non_gaussian_branches():
    net = stax.serial(
        stax.FanOut(2),
        stax.parallel(stax.serial(stax.Dense(8), stax.Relu()), stax.Dense(8)),
        stax.FanInSum(),
    )
    with pytest.raises(ValueError, match=r"FanInSum: every branch must end in an affine layer .* Add a Dense layer at the end"):
        net.kernel_fn(_x(3, 4))


def test_fan_in_without_branches_and_parallel_without_fan_out():
    with pytest.raises(ValueError, match=r"FanInSum: expected a list of kernels from parallel branches \(use stax.FanOut"):
        stax.serial(stax.Dense(3), stax.FanInSum()).kernel_fn(_x(3, 4))
    with pytest.raises(ValueError, match=r"parallel: expected a list of 2 kernels .*use stax.FanOut\(2\) before it"):
        stax.parallel(stax.Dense(3), stax.Dense(3)).kernel_fn(_x(3, 4))


def test_combinators_take_layers_not_triples():
    with pytest.raises(TypeError, match=r"serial: argument 1 must be a tangents.stax layer .*got int"):
        stax.serial(stax.Dense(3), 5)
    with pytest.raises(TypeError, match=r"Pass the layer object itself, not an \(init_fn, apply_fn, kernel_fn\) tuple"):
        stax.serial(tuple(stax.Dense(3)))


# ---------------------------------------------------------------------- layer arguments


@pytest.mark.parametrize("out_dim", [0, -1, 2.5, True])
def test_dense_out_dim(out_dim):  # noqa: ANN001
    with pytest.raises(ValueError, match=rf"Dense: out_dim must be a positive integer, got {out_dim!r}"):
        stax.Dense(out_dim)


def test_dense_parameterization_and_stds():
    with pytest.raises(ValueError, match=r"Dense: parameterization must be 'ntk' or 'standard', got 'foo'"):
        stax.Dense(3, parameterization="foo")
    with pytest.raises(ValueError, match=r"Dense: W_std must be a finite number, got nan"):
        stax.Dense(3, W_std=float("nan"))
    with pytest.raises(ValueError, match=r"Dense: b_std must be a finite number or None, got '0.1'"):
        stax.Dense(3, b_std="0.1")


def test_dense_channel_axis_out_of_range():
    with pytest.raises(ValueError, match=r"Dense: channel_axis=5 is out of range for 2-dimensional inputs"):
        stax.Dense(3, channel_axis=5).kernel_fn(_x(3, 4))
    with pytest.raises(ValueError, match=r"Dense: channel_axis=5 is out of range"):
        stax.Dense(3, channel_axis=5).init_fn(0, (-1, 4))


@pytest.mark.parametrize("num", [-1, 0, 1.5])
def test_fan_out_num(num):  # noqa: ANN001
    with pytest.raises(ValueError, match=rf"FanOut: num must be a positive integer, got {num!r}"):
        stax.FanOut(num)


@pytest.mark.parametrize("n", [-1, 1.0])
def test_repeat_n(n):  # noqa: ANN001
    with pytest.raises(ValueError, match=rf"repeat: n must be a non-negative integer, got {n!r}"):
        stax.repeat(stax.Dense(3), n)


@pytest.mark.parametrize("rate", [0.0, 1.5, -0.1])
def test_dropout_rate(rate: float):
    with pytest.raises(ValueError, match=r"Dropout: rate is the probability to KEEP a unit and must satisfy 0 < rate <= 1"):
        stax.Dropout(rate)


def test_dropout_mode():
    with pytest.raises(ValueError, match=r"Dropout: mode must be 'train' or 'test', got 'foo'"):
        stax.Dropout(0.5, mode="foo")


def test_layer_norm_axis():
    with pytest.raises(ValueError, match=r"LayerNorm: axis must be an int or a sequence of ints in \[-2, 2\)"):
        stax.serial(stax.Dense(3), stax.LayerNorm(axis=3)).kernel_fn(_x(3, 4))


@pytest.mark.parametrize("layer", ["Hermite", "Monomial"])
def test_negative_polynomial_degree(layer: str):
    with pytest.raises(ValueError, match=rf"{layer}: degree must be a non-negative integer, got -1"):
        getattr(stax, layer)(-1)


# ---------------------------------------------------------------------- init_fn / apply_fn


def test_apply_fn_with_the_wrong_feature_size():
    init_fn, apply_fn, _ = _net()
    _, params = init_fn(0, (-1, 4))
    with pytest.raises(ValueError, match=r"apply_fn: x has shape \(3, 5\), but the parameters were made for inputs of another shape: params\[0\]\[0\] \(W of Dense\(8.*has shape \(4, 8\) where inputs of shape \(3, 5\) need \(5, 8\)"):
        apply_fn(params, _x(3, 5))
    model = _net().to_module((-1, 4), seed=0)
    with pytest.raises(ValueError, match=r"model\(x\): x has shape \(3, 6\).*W of Dense.*has shape \(4, 8\)"):
        model(_x(3, 6))


def test_init_fn_arguments():
    init_fn = _net().init_fn
    with pytest.raises(TypeError, match=r"init_fn: rng must be an int seed, a torch.Generator or None, got str"):
        init_fn("0", (-1, 4))
    with pytest.raises(TypeError, match=r"init_fn: input_shape must be a tuple of ints \(or a list of such\), got '4'"):
        init_fn(0, "4")
    with pytest.raises(ValueError, match=r"Dense: the input's feature axis -1 must have a known size"):
        init_fn(0, (3, -1))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: stax.LeakyRelu("a"), r"ABRelu: a must be a finite number, got 'a'"),
        (lambda: stax.Erf(a=float("nan")), r"Erf: a must be a finite number"),
        (lambda: stax.Rbf(-1.0), r"Rbf: gamma must be a finite number >= 0"),
        (lambda: stax.Sin(b=float("inf")), r"Sin: b must be a finite number"),
        (lambda: stax.Exp(a=None), r"Exp: a must be a finite number"),
    ],
)
def test_activation_arguments_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_layout_flags_must_be_bool():
    net = stax.serial(stax.Dense(4), stax.Relu(), stax.Dense(1))
    with pytest.raises(TypeError, match="diagonal_batch must be None, True or False, got 'yes'"):
        net.kernel_fn(torch.ones(2, 3), None, "ntk", diagonal_batch="yes")
