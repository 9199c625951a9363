"""`tangents.predict` against neural-tangents 0.6.5, closed forms and identities.

Reference data: ``predict_fc_relu_d2.npz`` (the shared NT reference) and
``predict_ode_ce.npz``, computed with NT 0.6.5 in float64 from the same kernels by::

    y = np.eye(2)[(y_train[:, 0] > y_train[:, 1]).astype(int)]
    ce = lambda fx, y_hat: -jnp.mean(jax.nn.log_softmax(fx) * y_hat)
    mse = lambda fx, y_hat: 0.5 * jnp.mean((fx - y_hat) ** 2)
    t = np.array([0.5, 2.0, 10.0, 50.0])
    ce_*      = nt.predict.gradient_descent(ce, K, y)(t, fx_train_0, fx_test_0, K_td)
    ce_mom_*  = nt.predict.gradient_descent(ce, K, y, 0.5, momentum=0.9)(t, ...)
    mse_mom_* = nt.predict.gradient_descent(mse, K, y_train, 1.0, momentum=0.5)(t, ...)
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from reference_cases import CASES, REFERENCE_DIR, build, load, relative_error

from tangents import predict, stax

CASE = "predict_fc_relu_d2"
REF = load(CASE)
SPEC = CASES[CASE]
DIAG_REG = SPEC["diag_reg"]
NTKernel = collections.namedtuple("Kernel", "nngp ntk")


def _t(name: str) -> torch.Tensor:
    return torch.tensor(REF[name])


@pytest.fixture(scope="module")
def kernel_fn():
    return build(SPEC["arch"]).kernel_fn


# ---------------------------------------------------------------------- NT reference


@pytest.mark.parametrize("t_name", ["tinf", "t1", "tarr", "t1_train"])
@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_ensemble_matches_nt(kernel_fn, t_name, get):
    t = {"tinf": None, "t1": 1.0, "tarr": REF["ens_t_array"], "t1_train": 1.0}[t_name]
    x_test = None if t_name == "t1_train" else _t("x_test")
    predict_fn = predict.gradient_descent_mse_ensemble(
        kernel_fn, _t("x_train"), _t("y_train"), learning_rate=SPEC["learning_rate"], diag_reg=DIAG_REG
    )
    out = predict_fn(t=t, x_test=x_test, get=get, compute_cov=True)
    assert isinstance(out, predict.Gaussian)
    assert relative_error(out.mean, REF[f"ens_{t_name}_{get}_mean"]) <= 1e-8
    assert relative_error(out.covariance, REF[f"ens_{t_name}_{get}_cov"]) <= 1e-8


def test_ensemble_get_tuple_and_mean_only(kernel_fn):
    predict_fn = predict.gradient_descent_mse_ensemble(kernel_fn, REF["x_train"], REF["y_train"], diag_reg=DIAG_REG)
    both = predict_fn(x_test=REF["x_test"], get=("nngp", "ntk"))
    assert type(both).__name__ == "Gaussians" and both._fields == ("nngp", "ntk")
    assert relative_error(both.ntk, REF["ens_tinf_ntk_mean"]) <= 1e-8
    default = predict_fn(t=1.0, x_test=REF["x_test"])
    assert default._fields == ("nngp", "ntk")
    assert relative_error(default.nngp, REF["ens_t1_nngp_mean"]) <= 1e-8


@pytest.mark.parametrize("t_name", ["t1", "tinf", "t10", "tarr"])
def test_gradient_descent_mse_matches_nt(t_name):
    t = {"t1": 1.0, "tinf": None, "t10": 10.0, "tarr": REF["ens_t_array"]}[t_name]
    predict_fn = predict.gradient_descent_mse(_t("k_train_train_ntk"), _t("y_train"), 1.0, DIAG_REG)
    fx_train, fx_test = predict_fn(t, _t("fx_train_0"), _t("fx_test_0"), _t("k_test_train_ntk"))
    assert relative_error(fx_train, REF[f"gd_{t_name}_fx_train"]) <= 1e-8
    assert relative_error(fx_test, REF[f"gd_{t_name}_fx_test"]) <= 1e-8


def test_gradient_descent_mse_absolute_scale_matches_nt():
    # numpy inputs are accepted too
    predict_fn = predict.gradient_descent_mse(
        REF["k_train_train_ntk"], REF["y_train"], learning_rate=0.5, diag_reg=DIAG_REG, diag_reg_absolute_scale=True
    )
    fx_train, fx_test = predict_fn(2.0, 0.0, 0.0, REF["k_test_train_ntk"])
    assert isinstance(fx_train, torch.Tensor)
    assert relative_error(fx_train, REF["gd_abs_lr0.5_t2_fx_train"]) <= 1e-8
    assert relative_error(fx_test, REF["gd_abs_lr0.5_t2_fx_test"]) <= 1e-8


def test_gp_inference_matches_nt():
    k_dd = NTKernel(_t("k_train_train_nngp"), _t("k_train_train_ntk"))
    k_td = NTKernel(_t("k_test_train_nngp"), _t("k_test_train_ntk"))
    predict_fn = predict.gp_inference(k_dd, _t("y_train"), diag_reg=DIAG_REG)
    out = predict_fn(get=("nngp", "ntk"), k_test_train=k_td, k_test_test=_t("k_test_test_nngp"))
    for g in ("nngp", "ntk"):
        assert relative_error(getattr(out, g).mean, REF[f"gp_{g}_mean"]) <= 1e-8
        assert relative_error(getattr(out, g).covariance, REF[f"gp_{g}_cov"]) <= 1e-8
    ntkgp = predict_fn(get="ntkgp", k_test_train=k_td, k_test_test=_t("k_test_test_ntk"))
    assert relative_error(ntkgp.mean, REF["gp_ntkgp_mean"]) <= 1e-8
    assert relative_error(ntkgp.covariance, REF["gp_ntkgp_cov"]) <= 1e-8
    mean_only = predict_fn("nngp", k_td)
    assert relative_error(mean_only, REF["gp_nngp_mean"]) <= 1e-8


def test_gp_inference_accepts_tangents_kernel(kernel_fn):
    x_train, x_test = _t("x_train"), _t("x_test")
    k_dd, k_td = kernel_fn(x_train, None), kernel_fn(x_test, x_train)
    out = predict.gp_inference(k_dd, _t("y_train"), diag_reg=DIAG_REG)("ntk", k_td, kernel_fn(x_test, None, "nngp"))
    assert relative_error(out.covariance, REF["gp_ntk_cov"]) <= 1e-8


ODE = dict(np.load(REFERENCE_DIR / "predict_ode_ce.npz"))


def _cross_entropy(fx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(torch.log_softmax(fx, -1) * y).mean()


def _mse(fx: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((fx - y) ** 2).mean()


@pytest.mark.parametrize(
    "name, loss, y, kwargs",
    [
        ("ce", _cross_entropy, ODE["y_onehot"], {}),
        ("ce_mom", _cross_entropy, ODE["y_onehot"], {"learning_rate": 0.5, "momentum": 0.9}),
        ("mse_mom", _mse, REF["y_train"], {"momentum": 0.5}),
    ],
)
def test_gradient_descent_ode_matches_nt(name, loss, y, kwargs):
    predict_fn = predict.gradient_descent(loss, REF["k_train_train_ntk"], y, **kwargs)
    fx_train, fx_test = predict_fn(ODE["t"], REF["fx_train_0"], REF["fx_test_0"], REF["k_test_train_ntk"])
    assert fx_train.shape == (4, 20, 2)
    # Measured 2.2e-9 - 4.3e-8 (ce, ce_mom, mse_mom): NT's odeint (rtol = atol = 1.4e-8) against
    # our LSODA at rtol 1e-10; 1e-7 is just above, so a 1e-5 error in the dynamics fails.
    assert relative_error(fx_train, ODE[f"{name}_fx_train"]) <= 1e-7
    assert relative_error(fx_test, ODE[f"{name}_fx_test"]) <= 1e-7


# ---------------------------------------------------------------------- identities


def test_ode_with_mse_loss_equals_closed_form():
    k, ktd, y = _t("k_train_train_ntk"), _t("k_test_train_ntk"), _t("y_train")
    t = torch.tensor([[0.0, 3.0], [30.0, 0.5]])  # any order, any shape
    ode = predict.gradient_descent(_mse, k, y, learning_rate=0.7)(t, _t("fx_train_0"), _t("fx_test_0"), ktd)
    exact = predict.gradient_descent_mse(k, y, learning_rate=0.7)(t, _t("fx_train_0"), _t("fx_test_0"), ktd)
    for a, b in zip(ode, exact):
        assert a.shape == (2, 2) + b.shape[2:]
        assert relative_error(a, b.numpy()) <= 1e-7
    # test outputs alone, and an ODEState in -> ODEState out
    only_test = predict.gradient_descent(_mse, k, y)(2.0, None, _t("fx_test_0"), ktd)
    assert relative_error(only_test, predict.gradient_descent_mse(k, y)(2.0, None, _t("fx_test_0"), ktd).numpy()) <= 1e-7
    state = predict.gradient_descent(_mse, k, y, momentum=0.9)(1.0, predict.ODEState(_t("fx_train_0"), _t("fx_test_0")), None, ktd)
    assert isinstance(state, predict.ODEState) and state.qx_test.shape == (7, 2)


def test_t_zero_is_the_prior(kernel_fn):
    k, ktd = _t("k_train_train_ntk"), _t("k_test_train_ntk")
    fx_train, fx_test = predict.gradient_descent_mse(k, _t("y_train"), diag_reg=DIAG_REG)(0.0, _t("fx_train_0"), _t("fx_test_0"), ktd)
    assert torch.equal(fx_train, _t("fx_train_0")) and torch.equal(fx_test, _t("fx_test_0"))
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, _t("x_train"), _t("y_train"), diag_reg=DIAG_REG)
    out = ens(t=0.0, x_test=_t("x_test"), compute_cov=True)
    for g in ("nngp", "ntk"):
        assert torch.all(getattr(out, g).mean == 0)
        assert relative_error(getattr(out, g).covariance, REF["k_test_test_nngp"]) <= 1e-12


def test_large_t_approaches_infinite_time(kernel_fn):
    k, ktd = _t("k_train_train_ntk"), _t("k_test_train_ntk")
    predict_fn = predict.gradient_descent_mse(k, _t("y_train"), diag_reg=DIAG_REG)
    late = predict_fn(1e7, _t("fx_train_0"), _t("fx_test_0"), ktd)
    inf = predict_fn(None, _t("fx_train_0"), _t("fx_test_0"), ktd)
    # the train outputs at t = inf are y_train exactly (NT); with diag_reg they converge to
    # K (K + r I)^-1 y, so compare test outputs, which both compute with the regularized K
    assert relative_error(late[1], inf[1].numpy()) <= 1e-9
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, _t("x_train"), _t("y_train"), diag_reg=DIAG_REG)
    late, inf = ens(t=1e7, x_test=_t("x_test"), compute_cov=True), ens(t=None, x_test=_t("x_test"), compute_cov=True)
    for g in ("nngp", "ntk"):
        assert relative_error(getattr(late, g).mean, getattr(inf, g).mean.numpy()) <= 1e-9
        assert relative_error(getattr(late, g).covariance, getattr(inf, g).covariance.numpy()) <= 1e-8


@pytest.mark.parametrize("t", [None, 0.3, 3.0, [1.0, 100.0]])
def test_covariances_symmetric_psd(kernel_fn, t):
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, _t("x_train"), _t("y_train"), diag_reg=DIAG_REG)
    out = ens(t=t, x_test=_t("x_test"), compute_cov=True)
    for g in ("nngp", "ntk"):
        cov = getattr(out, g).covariance
        assert torch.equal(cov, cov.transpose(-1, -2))
        evals = torch.linalg.eigvalsh(cov)
        assert evals.min() >= -1e-10 * evals.max()


def test_time_array_adds_leading_axes():
    predict_fn = predict.gradient_descent_mse(_t("k_train_train_ntk"), _t("y_train"))
    t = torch.tensor([[0.5, 1.0, 2.0], [4.0, 8.0, 16.0]])
    fx_train, fx_test = predict_fn(t, _t("fx_train_0"), _t("fx_test_0"), _t("k_test_train_ntk"))
    assert fx_train.shape == (2, 3, 20, 2) and fx_test.shape == (2, 3, 7, 2)
    one = predict_fn(8.0, _t("fx_train_0"), _t("fx_test_0"), _t("k_test_train_ntk"))
    assert torch.allclose(fx_test[1, 1], one[1], rtol=1e-13, atol=1e-13)


def test_trace_axes_empty_equals_kronecker_kernel():
    """trace_axes=() with the kernel K ⊗ I (N, N, C, C) equals trace_axes=(-1,) with K."""
    k, ktd, y = _t("k_train_train_ntk"), _t("k_test_train_ntk"), _t("y_train")
    eye = torch.eye(2)
    k4, ktd4 = torch.einsum("ab,cd->abcd", k, eye), torch.einsum("ab,cd->abcd", ktd, eye)
    for t in (None, 2.0):
        a = predict.gradient_descent_mse(k, y, diag_reg=DIAG_REG)(t, _t("fx_train_0"), _t("fx_test_0"), ktd)
        b = predict.gradient_descent_mse(k4, y, diag_reg=DIAG_REG, trace_axes=())(t, _t("fx_train_0"), _t("fx_test_0"), ktd4)
        assert relative_error(b[1], a[1].numpy()) <= 1e-12
    # the normalization y_train.size is the same, the covariance comes out (N, N, C, C)
    kn = _t("k_train_train_nngp")
    kn4, kntd4 = torch.einsum("ab,cd->abcd", kn, eye), torch.einsum("ab,cd->abcd", _t("k_test_train_nngp"), eye)
    ktt4 = torch.einsum("ab,cd->abcd", _t("k_test_test_nngp"), eye)
    out = predict.gp_inference(kn4, y, diag_reg=DIAG_REG, trace_axes=())("nngp", kntd4, ktt4)
    assert out.covariance.shape == (7, 7, 2, 2)
    assert relative_error(out.covariance[:, :, 1, 1], REF["gp_nngp_cov"]) <= 1e-12
    assert torch.all(out.covariance[:, :, 0, 1] == 0)


def test_trace_axis_first():
    """trace_axes=(0,): outputs (C, N) with the kernel over the second axis."""
    k, ktd, y = _t("k_train_train_ntk"), _t("k_test_train_ntk"), _t("y_train")
    a = predict.gradient_descent_mse(k, y)(1.0, _t("fx_train_0"), _t("fx_test_0"), ktd)
    b = predict.gradient_descent_mse(k, y.T, trace_axes=(0,))(1.0, _t("fx_train_0").T, _t("fx_test_0").T, ktd)
    assert b[1].shape == (2, 7)
    assert relative_error(b[1].T, a[1].numpy()) <= 1e-13


def test_float32_in_float32_out_and_accuracy():
    predict_fn = predict.gradient_descent_mse(_t("k_train_train_ntk").float(), _t("y_train").float(), diag_reg=DIAG_REG)
    fx_train, fx_test = predict_fn(1.0, _t("fx_train_0").float(), _t("fx_test_0").float(), _t("k_test_train_ntk").float())
    assert fx_train.dtype == torch.float32 and fx_test.dtype == torch.float32
    assert relative_error(fx_test, REF["gd_t1_fx_test"]) <= 1e-6


def test_singular_kernel_finite_time_is_finite():
    """A rank-deficient PSD kernel at finite t: the λ → 0 limit, never NaN."""
    x = torch.randn(12, 3)
    k = x @ x.T  # rank 3
    y = torch.randn(12, 1)
    x_test = torch.randn(4, 3)
    out = predict.gradient_descent_mse(k, y)(5.0, 0.0, 0.0, x_test @ x.T)
    assert all(torch.isfinite(o).all() for o in out)
    # equals the linear model trained in weight space: w_t = (I - e^{-t XᵀX/n}) (XᵀX)⁺ Xᵀ y
    g = x.T @ x
    evals, v = torch.linalg.eigh(g)
    w = v @ torch.diag(-torch.expm1(-evals * 5.0 / 12) / evals) @ v.T @ x.T @ y
    assert relative_error(out[1], (x_test @ w).numpy()) <= 1e-10
    assert relative_error(out[0], (x @ w).numpy()) <= 1e-10


def test_eigendecomposition_and_cholesky_computed_once(monkeypatch, kernel_fn):
    from tangents._predict import _common

    counts = collections.Counter()
    for cls in ("Eigen", "Cholesky"):
        original = getattr(_common, cls).__init__

        def counted(self, *args, _original=original, _cls=cls, **kwargs):
            counts[_cls] += 1
            _original(self, *args, **kwargs)

        monkeypatch.setattr(getattr(_common, cls), "__init__", counted)
    predict_fn = predict.gradient_descent_mse(_t("k_train_train_ntk"), _t("y_train"), diag_reg=DIAG_REG)
    for t in (1.0, 2.0, [3.0, 4.0], None, None):
        predict_fn(t, 0.0, 0.0, _t("k_test_train_ntk"))
    assert counts == {"Eigen": 1, "Cholesky": 1}
    counts.clear()
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, _t("x_train"), _t("y_train"), diag_reg=DIAG_REG)
    for t in (1.0, 2.0, None, None):
        for get in ("nngp", "ntk", None):
            ens(t=t, x_test=_t("x_test"), get=get, compute_cov=True)
    assert counts == {"Eigen": 2, "Cholesky": 2}


# ---------------------------------------------------------------------- max_learning_rate


def test_max_learning_rate_closed_form_and_contraction():
    k = _t("k_train_train_ntk")
    lam_max = torch.linalg.eigvalsh(k)[-1].item()
    lr = predict.max_learning_rate(k, y_train_size=40)
    assert lr == pytest.approx(2 * 40 / lam_max, rel=1e-12)
    assert predict.max_learning_rate(k) == pytest.approx(2 * 20 / lam_max, rel=1e-12)
    assert predict.max_learning_rate(k, 40, momentum=0.9) == pytest.approx(1.9 * lr, rel=1e-12)
    # discrete gradient descent on the linearized model: r <- (I - lr/n K) r
    y = _t("y_train")
    for factor, converges in ((0.99, True), (1.01, False)):
        r = -y.clone()
        for _ in range(3000):
            r = r - factor * lr / 40 * k @ r
        assert bool(r.abs().max() < 1e-3) == converges


# ---------------------------------------------------------------------- errors


def test_not_positive_definite_names_diag_reg():
    x = torch.randn(6, 2)
    k = x @ x.T  # rank 2: singular
    with pytest.raises(ValueError, match="not positive definite.*diag_reg"):
        predict.gradient_descent_mse(k, torch.randn(6, 1))(None, 0.0, 0.0, torch.randn(3, 6))
    with pytest.raises(ValueError, match="diag_reg"):
        predict.gp_inference(-torch.eye(6), torch.randn(6, 1))("nngp", torch.randn(3, 6))
    # with diag_reg it works
    out = predict.gradient_descent_mse(k, torch.randn(6, 1), diag_reg=1e-3)(None, 0.0, 0.0, torch.randn(3, 6))
    assert torch.isfinite(out[1]).all()


def test_ensemble_with_duplicate_inputs_names_diag_reg(kernel_fn):
    x = _t("x_train")[:5].repeat(2, 1)  # every input twice: singular kernels
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, x, torch.randn(10, 1))
    with pytest.raises(ValueError, match="gradient_descent_mse_ensemble: the train-train 'ntk' kernel.*diag_reg"):
        ens(x_test=_t("x_test"), get="ntk")
    regularized = predict.gradient_descent_mse_ensemble(kernel_fn, x, torch.randn(10, 1), diag_reg=1e-6)
    assert torch.isfinite(regularized(x_test=_t("x_test"), get="ntk")).all()


def test_indefinite_kernel_at_finite_time_names_diag_reg():
    k = torch.diag(torch.tensor([1.0, 2.0, -0.5]))
    with pytest.raises(ValueError, match="not positive semi-definite.*diag_reg"):
        predict.gradient_descent_mse(k, torch.randn(3, 1))(1.0, 0.0)


def test_solve_dtype_float32(kernel_fn):
    ens = predict.gradient_descent_mse_ensemble(
        kernel_fn, _t("x_train"), _t("y_train"), diag_reg=DIAG_REG, solve_dtype=torch.float32
    )
    for t_name, t in (("tinf", None), ("t1", 1.0)):
        out = ens(t=t, x_test=_t("x_test"), get="ntk", compute_cov=True)
        assert out.mean.dtype == torch.float64  # the kernel's dtype
        # Solved in float32: measured 1.1e-7 - 3.3e-7 (a few float32 ulps times the
        # conditioning of this 20-point kernel); 1e-6 is just above.
        assert relative_error(out.mean, REF[f"ens_{t_name}_ntk_mean"]) <= 1e-6
        assert relative_error(out.covariance, REF[f"ens_{t_name}_ntk_cov"]) <= 1e-6
    with pytest.raises(ValueError, match="solve_dtype must be torch.float64"):
        predict.gp_inference(_t("k_train_train_nngp"), _t("y_train"), solve_dtype=torch.float16)


def test_nan_kernel_is_rejected():
    k = torch.eye(4)
    k[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        predict.gradient_descent_mse(k, torch.randn(4, 1))


def test_bad_inputs():
    k, y = _t("k_train_train_ntk"), _t("y_train")
    with pytest.raises(ValueError, match="interleaved shape"):
        predict.gradient_descent_mse(k[:5, :5], y)
    predict_fn = predict.gradient_descent_mse(k, y)
    with pytest.raises(ValueError, match="k_test_train"):
        predict_fn(1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="both fx_train_0 and fx_test_0 are None"):
        predict_fn(1.0, None, None)
    with pytest.raises(ValueError, match="k_test_train has shape"):
        predict_fn(1.0, 0.0, 0.0, torch.zeros(7, 19))
    with pytest.raises(TypeError, match="k_train_train must be"):
        predict.gradient_descent_mse([[1.0]], y)
    with pytest.raises(ValueError, match="diag_reg must be >= 0"):
        predict.gradient_descent_mse(k, y, diag_reg=-1.0)(None, 0.0, 0.0, _t("k_test_train_ntk"))
    with pytest.raises(ValueError, match="out of range"):
        predict.gradient_descent_mse(k, y, trace_axes=(2,))


def test_bad_get_and_missing_kernels(kernel_fn):
    ens = predict.gradient_descent_mse_ensemble(kernel_fn, _t("x_train"), _t("y_train"), diag_reg=DIAG_REG)
    with pytest.raises(ValueError, match="get='ntkgp' is not supported"):
        ens(x_test=_t("x_test"), get="ntkgp")
    with pytest.raises(ValueError, match="unique"):
        ens(x_test=_t("x_test"), get=("ntk", "ntk"))
    gp = predict.gp_inference(_t("k_train_train_ntk"), _t("y_train"), diag_reg=DIAG_REG)
    with pytest.raises(ValueError, match="needs both the NTK and the NNGP"):
        gp("ntk", _t("k_test_train_ntk"), _t("k_test_test_nngp"))
    gp2 = predict.gp_inference(NTKernel(None, _t("k_train_train_ntk")), _t("y_train"), diag_reg=DIAG_REG)
    with pytest.raises(ValueError, match="has no 'nngp' kernel"):
        gp2("nngp", NTKernel(None, _t("k_test_train_ntk")))
    with pytest.raises(ValueError, match="k_test_test has shape"):
        gp("nngp", _t("k_test_train_ntk"), torch.eye(3))


def test_ode_errors():
    predict_fn = predict.gradient_descent(_mse, _t("k_train_train_ntk"), _t("y_train"))
    with pytest.raises(ValueError, match="t=None"):
        predict_fn(None, 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        predict_fn(-1.0, 0.0)
    with pytest.raises(ValueError, match="momentum is None"):
        predict_fn(1.0, predict.ODEState(_t("fx_train_0"), None, _t("fx_train_0")))
    with pytest.raises(TypeError, match="scalar"):
        predict.gradient_descent(lambda f, y: f - y, _t("k_train_train_ntk"), _t("y_train"))(1.0, 0.0)


def test_public_names():
    import tangents

    assert tangents.predict is predict
    for name in ("gradient_descent_mse", "gradient_descent_mse_ensemble", "gp_inference", "gradient_descent",
                 "max_learning_rate", "Gaussian", "ODEState"):
        assert hasattr(predict, name)
    assert stax is not None
