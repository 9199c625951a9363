"""`tangents.predict` refuses impossible arguments with a message naming them (issue #12).

Each case is what a user could type: a negative time or learning rate (which used to return
finite numbers of size 1e3–1e7), ``solver=`` (which used to be passed on to ``kernel_fn``
and ignored), NaN in targets or kernels, wrong types and shapes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tangents import predict, stax


@pytest.fixture(scope="module")
def problem():
    net = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(1))
    g = torch.Generator().manual_seed(3)
    f64 = dict(generator=g, dtype=torch.float64)
    x, y, xt = torch.randn(12, 4, **f64), torch.randn(12, 2, **f64), torch.randn(3, 4, **f64)
    k, ktd = net.kernel_fn(x, None, "ntk"), net.kernel_fn(xt, x, "ntk")
    return net.kernel_fn, x, y, xt, k, ktd


def test_negative_time_is_refused(problem):
    kernel_fn, x, y, xt, k, ktd = problem
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=1e-4)
    with pytest.raises(ValueError, match=r"t must be >= 0 .*got -5"):
        ens(t=-5, x_test=xt)
    with pytest.raises(ValueError, match=r"t must be >= 0 .*got -1"):
        ens(t=[1.0, -1.0], x_test=xt)
    mse = predict.gradient_descent_mse(k, y)
    with pytest.raises(ValueError, match=r"t must be >= 0"):
        mse(-5.0, 0.0, 0.0, ktd)
    with pytest.raises(ValueError, match="t contains NaN"):
        mse(float("nan"), 0.0, 0.0, ktd)
    with pytest.raises(TypeError, match="t must be a number"):
        mse(["a"], 0.0, 0.0, ktd)
    # t = +inf is the end of training: the same as t=None (test outputs)
    a, b = mse(math.inf, 0.0, 0.0, ktd)[1], mse(None, 0.0, 0.0, ktd)[1]
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)  # measured 1e-13


@pytest.mark.parametrize("lr", [-1.0, 0.0, float("nan"), float("inf")])
def test_learning_rate_must_be_positive_and_finite(problem, lr):
    kernel_fn, x, y, xt, k, ktd = problem
    with pytest.raises(ValueError, match=r"gradient_descent_mse_ensemble: learning_rate must be > 0 and finite"):
        predict.gradient_descent_mse_ensemble(kernel_fn, x, y, learning_rate=lr)
    with pytest.raises(ValueError, match=r"gradient_descent_mse: learning_rate must be > 0 and finite"):
        predict.gradient_descent_mse(k, y, learning_rate=lr)


@pytest.mark.parametrize("diag_reg", [-1e-3, float("nan"), float("inf")])
def test_diag_reg_must_be_non_negative_and_finite(problem, diag_reg):
    kernel_fn, x, y, xt, k, ktd = problem
    for make in (
        lambda: predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=diag_reg),
        lambda: predict.gradient_descent_mse(k, y, diag_reg=diag_reg),
        lambda: predict.gp_inference(k, y, diag_reg=diag_reg),
        lambda: predict.nystrom(kernel_fn, x, y, n_centers=4, diag_reg=diag_reg),
    ):
        with pytest.raises(ValueError, match="diag_reg must be >= 0 and finite"):
            make()


def test_types_are_checked(problem):
    kernel_fn, x, y, xt, k, ktd = problem
    with pytest.raises(TypeError, match="learning_rate must be a real number, got str"):
        predict.gradient_descent_mse(k, y, learning_rate="1")
    with pytest.raises(TypeError, match="diag_reg_absolute_scale must be True or False"):
        predict.gp_inference(k, y, diag_reg_absolute_scale="yes")
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=1e-4)
    with pytest.raises(TypeError, match="compute_cov must be True or False"):
        ens(x_test=xt, compute_cov="no")
    with pytest.raises(TypeError, match="get must be a name"):
        ens(x_test=xt, get=5)
    with pytest.raises(TypeError, match="trace_axes must be an int or a sequence of ints"):
        predict.gradient_descent_mse(k, y, trace_axes="a")
    with pytest.raises(TypeError, match="kernel_fn must be callable"):
        predict.gradient_descent_mse_ensemble("fc", x, y)


def test_solver_is_an_argument_not_a_kernel_fn_keyword(problem):
    kernel_fn, x, y, xt, k, ktd = problem
    seen = []

    def strict(x1, x2=None, get=None, **kwargs):
        seen.append(set(kwargs))
        if kwargs:
            raise TypeError(f"kernel_fn got unexpected keyword arguments {sorted(kwargs)}")
        return kernel_fn(x1, x2, get)

    out = predict.gradient_descent_mse_ensemble(strict, x, y, diag_reg=1e-4, solver="cg", tol=1e-10)(x_test=xt, get="ntk")
    exact = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=1e-4, solver="cholesky")(x_test=xt, get="ntk")
    assert seen and all(not s for s in seen)
    assert torch.allclose(out, exact, rtol=1e-6, atol=1e-9)  # measured 1e-12
    with pytest.raises(ValueError, match=r"solver='cgg' is not supported; choose from 'auto', 'cholesky', 'cg'"):
        predict.gradient_descent_mse_ensemble(kernel_fn, x, y, solver="cgg")
    with pytest.raises(TypeError, match="solver must be one of"):
        predict.gp_inference(k, y, solver=None)
    with pytest.raises(ValueError, match="tol must be a number between 0 and 1"):
        predict.gp_inference(k, y, tol=0.0)
    with pytest.raises(ValueError, match="max_iter must be a positive integer"):
        predict.gradient_descent_mse(k, y, max_iter=0)
    with pytest.raises(ValueError, match="preconditioner='ilu' is not supported"):
        predict.gradient_descent_mse(k, y, preconditioner="ilu")
    with pytest.raises(ValueError, match="preconditioner_rank must be a non-negative integer"):
        predict.gradient_descent_mse(k, y, preconditioner_rank=-1)


def test_non_finite_targets_and_kernels(problem):
    kernel_fn, x, y, xt, k, ktd = problem
    bad_y = y.clone()
    bad_y[3, 1] = float("inf")
    with pytest.raises(ValueError, match="y_train contains 1 NaN or infinite entries"):
        predict.gradient_descent_mse_ensemble(kernel_fn, x, bad_y)
    with pytest.raises(ValueError, match="y_train contains 1 NaN or infinite entries"):
        predict.gp_inference(k, bad_y)
    bad_ktd = ktd.clone()
    bad_ktd[0, 0] = float("nan")
    for solver in ("cholesky", "cg"):
        with pytest.raises(ValueError, match="k_test_train contains NaN"):
            predict.gp_inference(k, y, diag_reg=1e-4, solver=solver)("ntk", bad_ktd)
        with pytest.raises(ValueError, match="k_test_train contains NaN"):
            predict.gradient_descent_mse(k, y, diag_reg=1e-4, solver=solver)(None, 0.0, 0.0, bad_ktd)

    def nan_kernel(x1, x2=None, get=None):
        """NaN in the train-train kernel."""
        out = kernel_fn(x1, x2, get)
        if x2 is not None and x2 is not x1:
            return out
        return type(out)(*(v * float("nan") for v in out)) if isinstance(out, tuple) else out * float("nan")

    for solver in ("cholesky", "cg"):
        with pytest.raises(ValueError, match="NaN or infinite"):
            predict.gradient_descent_mse_ensemble(nan_kernel, x, y, diag_reg=1e-4, solver=solver)(x_test=xt, get="ntk")


def test_shapes_are_checked(problem):
    kernel_fn, x, y, xt, k, ktd = problem
    with pytest.raises(ValueError, match=r"x_train has 12 examples .* but y_train has 11"):
        predict.gradient_descent_mse_ensemble(kernel_fn, x, y[:11])
    with pytest.raises(ValueError, match="y_train must have at least one example"):
        predict.gp_inference(k, torch.zeros(0, 2))
    with pytest.raises(ValueError, match=r"fx_train_0 has shape \(5,\), which does not broadcast to the outputs' shape \(12, 2\)"):
        predict.gradient_descent_mse(k, y)(1.0, torch.zeros(5), 0.0, ktd)
    # a train-train kernel that does not match the targets is named at construction
    with pytest.raises(ValueError, match=r"gp_inference: k_train_train has shape \(12, 12\), but y_train has shape \(11, 2\)"):
        predict.gp_inference(k, y[:11])


def test_gradient_descent_arguments(problem):
    """The ODE predictor (any loss) checks like the others: NaN targets, learning_rate, momentum."""
    kernel_fn, x, y, xt, k, ktd = problem

    def loss(f, target):
        return 0.5 * ((f - target) ** 2).sum()

    bad_y = y.clone()
    bad_y[0, 0] = float("nan")
    with pytest.raises(ValueError, match="gradient_descent: y_train contains 1 NaN or infinite entries"):
        predict.gradient_descent(loss, k, bad_y)
    for lr in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="gradient_descent: learning_rate must be > 0 and finite"):
            predict.gradient_descent(loss, k, y, learning_rate=lr)
    with pytest.raises(ValueError, match=r"gradient_descent: momentum must be >= 0 and finite, got -0.5"):
        predict.gradient_descent(loss, k, y, momentum=-0.5)
    with pytest.raises(ValueError, match=r"gradient_descent: momentum must be in \[0, 1\] .*got 1.5"):
        predict.gradient_descent(loss, k, y, momentum=1.5)


def test_unsupported_combinations_say_what_to_do(problem):
    kernel_fn, x, y, xt, k, ktd = problem
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, x, y, diag_reg=1e-4, solver="cg")
    with pytest.raises(ValueError, match="covariance on the training inputs at finite t .* pass solver='cholesky', or x_test"):
        ens(t=1.0, compute_cov=True)
    # a stored kernel too large for a factorization: a MemoryError before allocating
    class Huge:
        shape, dtype = (10**6, 10**6), np.dtype("float32")

        def __getitem__(self, key):
            raise AssertionError("must not be read")

    with pytest.raises(MemoryError, match=r"solver='cholesky' needs .* GiB .* Use solver='cg'"):
        predict.gradient_descent_mse(Huge(), torch.zeros(10**6, 1), solver="cholesky")(None, 0.0, 0.0, np.zeros((1, 10**6)))


def test_nystrom_arguments(problem):
    kernel_fn, x, y, xt, k, ktd = problem
    with pytest.raises(ValueError, match="n_centers must be an integer between 1 and the 12 training points, got 13"):
        predict.nystrom(kernel_fn, x, y, n_centers=13)
    with pytest.raises(ValueError, match="n_centers must be an integer between 1 and the 12 training points, got 0"):
        predict.nystrom(kernel_fn, x, y, n_centers=0)
    with pytest.raises(ValueError, match="centers='kmeans' is not supported"):
        predict.nystrom(kernel_fn, x, y, n_centers=4, centers="kmeans")
    with pytest.raises(ValueError, match="centers='leverage' samples by ridge leverage scores, which need diag_reg > 0"):
        predict.nystrom(kernel_fn, x, y, n_centers=4, centers="leverage")
    with pytest.raises(ValueError, match="centers must be distinct row indices between 0 and 11"):
        predict.nystrom(kernel_fn, x, y, centers=[0, 0, 3])
    with pytest.raises(TypeError, match="seed must be a non-negative int"):
        predict.nystrom(kernel_fn, x, y, n_centers=4, seed=-1)
    with pytest.raises(ValueError, match=r"per-example keyword arguments such as pattern=\(\.\.\., \.\.\.\)"):
        predict.nystrom(kernel_fn, x, y, n_centers=4, pattern=(torch.ones(12, 2), None))
    ny = predict.nystrom(kernel_fn, x, y, n_centers=6, diag_reg=1e-3, centers=np.arange(0, 12, 2))
    with pytest.raises(ValueError, match="predicts the end of training, t=None, got t=1.0"):
        ny(1.0, xt)
    with pytest.raises(ValueError, match="compute_cov=True is not supported by nystrom"):
        ny(x_test=xt, compute_cov=True)
    assert ny(x_test=xt, get="ntk").shape == (3, 2)
    assert ny.info["centers"].tolist() == [0, 2, 4, 6, 8, 10]
    one_output = predict.nystrom(kernel_fn, x, y[:, 0], n_centers=6, diag_reg=1e-3, seed=0)(x_test=xt, get="ntk")
    assert one_output.shape == (3,)


def test_max_learning_rate_arguments(problem):
    kernel_fn, x, y, xt, k, ktd = problem
    with pytest.raises(ValueError, match=r"max_learning_rate: y_train_size must be >= 1 .*got -3"):
        predict.max_learning_rate(k, -3)
    with pytest.raises(TypeError, match=r"max_learning_rate: y_train_size must be an int .*got float 2.5"):
        predict.max_learning_rate(k, 2.5)
    with pytest.raises(ValueError, match=r"max_learning_rate: momentum must be in \[0, 1\], got 2.0"):
        predict.max_learning_rate(k, momentum=2.0)
    with pytest.raises(ValueError, match=r"max_learning_rate: momentum must be >= 0 and finite, got nan"):
        predict.max_learning_rate(k, momentum=float("nan"))
    with pytest.raises(ValueError, match=r"max_learning_rate: eps must be >= 0 and finite"):
        predict.max_learning_rate(k, eps=-1.0)
    with pytest.raises(ValueError, match=r"largest eigenvalue of ntk_train_train is -.* <= 0.*positive semi-definite"):
        predict.max_learning_rate(-k)  # a negated kernel would give a negative "learning rate"
