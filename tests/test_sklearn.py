"""`tangents.sklearn`: NTKRegressor, NTKClassifier and InfiniteWidthKernel (issue #15, items 1-2).

Oracles: scikit-learn's own estimator checks; neural-tangents' float64 ensemble
predictions (``tests/reference/predict_fc_relu_d2.npz``); numpy/scipy closed forms
(kernel regression, brute-force leave-one-out refits, an independent Cholesky-based
likelihood maximisation); scikit-learn's ``GaussianProcessRegressor`` on the same kernel;
central finite differences for ``eval_gradient``.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn", reason="scikit-learn is the optional extra tangents[sklearn]")

from scipy.optimize import minimize  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_iris, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.gaussian_process import GaussianProcessRegressor  # noqa: E402
from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from reference_cases import CASES, build, load  # noqa: E402
from tangents import predict, stax  # noqa: E402
from tangents._sklearn._spectral import evidence_diag_reg, fit_temperature, loo_outputs  # noqa: E402
from tangents.sklearn import InfiniteWidthKernel, NTKClassifier, NTKRegressor  # noqa: E402

RNG = np.random.default_rng(15)


def _net(W_std: float = 1.5, b_std: float = 0.5) -> stax.Layer:
    return stax.serial(stax.Dense(512, W_std, b_std), stax.Relu(), stax.Dense(1, W_std, b_std))


def _kernel(net: stax.Layer, a: np.ndarray, b: np.ndarray | None, get: str) -> np.ndarray:
    return net.kernel_fn(torch.tensor(a), None if b is None else torch.tensor(b), get).numpy()


# ---------------------------------------------------------------------- scikit-learn's checks


# Every check runs; scikit-learn itself skips 8 whose requirements this environment lacks,
# with its own reasons: "pandas is not installed" (pandas is not a test dependency) and
# "SCIPY_ARRAY_API is not set" (the estimators do not declare array-API support).
@parametrize_with_checks(
    [
        NTKRegressor(),
        NTKClassifier(),
        NTKRegressor(kernel="nngp", t=10.0, diag_reg=1e-3),
        NTKClassifier(kernel="nngp", t=5.0, depth=1, activation="erf"),
    ]
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------------- predictions


@pytest.mark.parametrize("t", [None, 1.0])
@pytest.mark.parametrize("kernel", ["nngp", "ntk"])
def test_regressor_matches_neural_tangents_ensemble(kernel, t):
    """Mean and covariance of NTKRegressor (the reference's architecture, diag_reg=1e-3, no
    target scaling) equal NT's gradient_descent_mse_ensemble outputs to 1e-8 relative (the
    reference precision; measured <= 3e-12); return_std is the covariance's diagonal."""
    ref = load("predict_fc_relu_d2")
    model = NTKRegressor(kernel=kernel, network=build(CASES["predict_fc_relu_d2"]["arch"]), t=t, diag_reg=1e-3,
                         normalize_y=False).fit(ref["x_train"], ref["y_train"])
    name = "tinf" if t is None else "t1"
    mean, cov = model.predict(ref["x_test"], return_cov=True)
    expected_mean, expected_cov = ref[f"ens_{name}_{kernel}_mean"], ref[f"ens_{name}_{kernel}_cov"]
    assert mean.shape == (7, 2) and cov.shape == (7, 7, 2)
    assert np.abs(mean - expected_mean).max() <= 1e-8 * np.abs(expected_mean).max()
    for c in range(2):  # the same covariance for each target column (kernel ⊗ I)
        assert np.abs(cov[:, :, c] - expected_cov).max() <= 1e-8 * np.abs(expected_cov).max()
    mean_std, std = model.predict(ref["x_test"], return_std=True)
    assert np.array_equal(mean_std, model.predict(ref["x_test"]))
    assert np.allclose(std[:, 0], np.sqrt(np.clip(np.diag(expected_cov), 0, None)), rtol=1e-7, atol=1e-10)


def test_regressor_std_equals_scikit_learn_gp():
    """The NNGP regressor's mean and std are those of scikit-learn's GaussianProcessRegressor
    with the same (fixed) kernel and noise alpha = diag_reg · mean(diag K); single-output y
    gives 1-D results. Agreement measured at 1e-12 relative."""
    X, y = RNG.standard_normal((40, 3)), RNG.standard_normal(40)
    X_test = RNG.standard_normal((9, 3))
    net = _net()
    model = NTKRegressor(kernel="nngp", network=net, diag_reg=0.1, normalize_y=False).fit(X, y)
    mean, std = model.predict(X_test, return_std=True)
    assert mean.shape == (9,) and std.shape == (9,)
    alpha = 0.1 * np.diag(_kernel(net, X, None, "nngp")).mean()
    gp = GaussianProcessRegressor(InfiniteWidthKernel(net, hyperparameter_bounds="fixed"), alpha=alpha, optimizer=None)
    gp_mean, gp_std = gp.fit(X, y).predict(X_test, return_std=True)
    assert np.allclose(mean, gp_mean, rtol=1e-9, atol=1e-12)
    assert np.allclose(std, gp_std, rtol=1e-9, atol=1e-12)


def test_regressor_normalizes_targets_and_chooses_diag_reg_by_evidence():
    """normalize_y=True is regression on (y - mean) / std, undone on the outputs (and the
    std scaled); diag_reg="auto" is the regulariser found by an independent search: scipy
    maximising predict.log_marginal_likelihood (Cholesky) over amplitude and noise, within
    2% (the searches' tolerances; measured 0.1%)."""
    X, y = make_regression(60, 4, noise=10.0, random_state=0)
    X_test = RNG.standard_normal((5, 4))
    model = NTKRegressor().fit(X, y)
    scaled = NTKRegressor(diag_reg=model.diag_reg_, normalize_y=False).fit(X, (y - y.mean()) / y.std())
    mean, std = model.predict(X_test, return_std=True)
    mean_s, std_s = scaled.predict(X_test, return_std=True)
    assert np.allclose(mean, mean_s * y.std() + y.mean(), rtol=1e-10)
    assert np.allclose(std, std_s * y.std(), rtol=1e-10)

    k = model._kernels.train("ntk")
    targets = torch.tensor((y - y.mean()) / y.std())[:, None]

    def negative(log_params: np.ndarray) -> float:
        amplitude, r = np.exp(log_params)
        return -float(predict.log_marginal_likelihood(amplitude * k, targets, r))

    # the evidence has a local optimum at noise -> 0 here: start from several noises
    starts = [np.log([1.0, r]) for r in (1e-4, 1e-2, 1.0)]
    best = min((minimize(negative, x0=x0, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-10}) for x0 in starts),
               key=lambda result: result.fun)
    assert model.diag_reg_ == pytest.approx(np.exp(best.x[1]), rel=0.02)
    assert evidence_diag_reg(k, targets) == pytest.approx(model.diag_reg_)


def test_classifier_is_kernel_regression_on_centred_one_hot_labels():
    """String labels in any order; outputs = K_td (K + λ m I)⁻¹ (e_c - 1/C) by numpy;
    predict = argmax; binary decision_function = f₁ - f₀; probabilities sum to 1, their
    argmax is predict, and they rank like decision_function."""
    X, labels = RNG.standard_normal((30, 3)), RNG.integers(0, 3, 30)
    y = np.array(["spam", "eggs", "ham"], dtype=object)[labels]
    X_test = RNG.standard_normal((8, 3))
    net = _net()
    model = NTKClassifier(network=net, diag_reg=1e-2).fit(X, y)
    assert list(model.classes_) == ["eggs", "ham", "spam"]
    index = np.searchsorted(model.classes_, y)
    k = _kernel(net, X, None, "ntk")
    outputs = _kernel(net, X_test, X, "ntk") @ np.linalg.solve(k + 1e-2 * np.diag(k).mean() * np.eye(30), np.eye(3)[index] - 1 / 3)
    assert np.allclose(model.decision_function(X_test), outputs, rtol=1e-9, atol=1e-12)
    assert np.array_equal(model.predict(X_test), model.classes_[outputs.argmax(axis=1)])
    proba = model.predict_proba(X_test)
    assert np.allclose(proba.sum(axis=1), 1.0) and np.array_equal(proba.argmax(axis=1), outputs.argmax(axis=1))
    assert np.allclose(np.log(proba), model.predict_log_proba(X_test))

    binary = NTKClassifier(network=net).fit(X, labels == 1)
    decision = binary.decision_function(X_test)
    assert decision.shape == (8,)
    assert np.array_equal(binary.predict(X_test), decision > 0)
    assert np.array_equal(np.argsort(binary.predict_proba(X_test)[:, 1]), np.argsort(decision))


@pytest.mark.parametrize("t", [None, 3.0])
def test_leave_one_out_outputs_and_temperature(t):
    """At t=∞ the closed-form leave-one-out outputs equal 25 refits without each point
    (numpy solves; measured 1e-13); at finite t they are the generalised approximation,
    checked here only for being finite. The temperature minimises the leave-one-out log loss:
    the loss is no lower 2% away on either side. Labels follow the first feature (random
    labels carry no signal: their best temperature is the search's upper bound, e⁵)."""
    rng = np.random.default_rng(1515)  # its own stream: the data do not depend on which tests ran before
    X = rng.standard_normal((25, 3))
    labels = (X[:, 0] + 0.5 * rng.standard_normal(25) > 0).astype(int)
    y = np.eye(2)[labels] - 0.5
    k = _kernel(_net(), X, None, "nngp")
    tau = None if t is None else t / y.size
    loo = loo_outputs(torch.tensor(k), torch.tensor(y), 1e-2, tau).numpy()
    if t is None:
        lam = 1e-2 * np.diag(k).mean()
        for i in range(25):
            keep = np.arange(25) != i
            refit = k[i, keep] @ np.linalg.solve(k[np.ix_(keep, keep)] + lam * np.eye(24), y[keep])
            assert np.allclose(loo[i], refit, rtol=1e-9, atol=1e-12)
    assert np.isfinite(loo).all()
    temperature = fit_temperature(loo, labels)

    def log_loss(T: float) -> float:
        z = loo / T
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(25), labels]))

    assert 0.01 < temperature < 100  # inside the search's bounds [e⁻⁷, e⁵]
    assert log_loss(temperature) <= min(log_loss(temperature * 1.02), log_loss(temperature / 1.02))


def test_convolutional_network_on_flattened_images():
    """input_shape reshapes rows to images; the classifier equals kernel regression with
    the CNN's NTK on the images."""
    images = RNG.standard_normal((20, 1, 6, 6))
    labels = RNG.integers(0, 2, 20)
    cnn = stax.serial(stax.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.1), stax.Relu(), stax.GlobalAvgPool(),
                      stax.Dense(1, 1.5, 0.1))
    model = NTKClassifier(network=cnn, input_shape=(1, 6, 6)).fit(images.reshape(20, 36), labels)
    k = _kernel(cnn, images, None, "ntk")
    outputs = _kernel(cnn, images[:5], images, "ntk") @ np.linalg.solve(k + 1e-4 * np.diag(k).mean() * np.eye(20), np.eye(2)[labels] - 0.5)
    assert np.allclose(model.decision_function(images[:5].reshape(5, 36)), outputs[:, 1] - outputs[:, 0], rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------- scikit-learn tools


def test_pipeline_grid_search_cross_validation_clone_and_pickle():
    """Iris in a Pipeline: 5-fold accuracy (measured 0.96-0.97; chance 0.33); a grid search
    over W_std, b_std and diag_reg picks one of the grid; a clone is unfitted with the same
    parameters; a pickled fitted model predicts the same."""
    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), NTKClassifier())
    assert cross_val_score(pipe, X, y, cv=5).mean() >= 0.9
    search = GridSearchCV(pipe, {"ntkclassifier__b_std": [0.05, 1.0], "ntkclassifier__diag_reg": [1e-4, "auto"]}, cv=3)
    search.fit(X, y)
    assert search.best_params_["ntkclassifier__b_std"] in (0.05, 1.0)
    assert search.best_score_ >= 0.9
    fitted = search.best_estimator_
    copy = clone(fitted)
    assert copy.get_params()["ntkclassifier__b_std"] == fitted.get_params()["ntkclassifier__b_std"]
    assert not hasattr(copy[-1], "classes_")
    loaded = pickle.loads(pickle.dumps(fitted))
    assert np.array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    regressor = NTKRegressor(kernel="nngp").fit(X[:, :3], X[:, 3])
    again = pickle.loads(pickle.dumps(regressor))
    assert np.array_equal(again.predict(X[:, :3], return_std=True)[1], regressor.predict(X[:, :3], return_std=True)[1])


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"kernel": "rbf"}, r"NTKRegressor: kernel must be 'ntk' or 'nngp', got 'rbf'"),
        ({"network": "mlp"}, r"NTKRegressor: network must be None or a tangents.stax layer"),
        ({"depth": -1}, r"NTKRegressor: depth must be an integer >= 0, got -1"),
        ({"width": 0}, r"NTKRegressor: width must be an integer >= 1, got 0"),
        ({"activation": "tanh"}, r"NTKRegressor: activation must be one of 'relu', 'erf', .* got 'tanh'"),
        ({"W_std": float("nan")}, r"NTKRegressor: W_std must be a finite number, got nan"),
        ({"parameterization": "mup"}, r"NTKRegressor: parameterization must be 'ntk' or 'standard', got 'mup'"),
        ({"input_shape": (3, 0)}, r"NTKRegressor: input_shape must be None or a tuple of positive ints"),
        ({"input_shape": (2, 2)}, r"NTKRegressor: input_shape=\(2, 2\) holds 4 numbers per example, but X has 3 features"),
        ({"t": -1.0}, r"NTKRegressor: t must be a finite number >= 0, got -1.0"),
        ({"learning_rate": 0.0}, r"NTKRegressor: learning_rate must be a finite number > 0, got 0.0"),
        ({"diag_reg": -1e-3}, r"NTKRegressor: diag_reg must be a finite number >= 0, got -0.001"),
        ({"solver": "magic"}, r"NTKRegressor: solver="),
        ({"device": "gpu7"}, r"NTKRegressor: device must name a torch device such as 'cpu' or 'cuda', got 'gpu7'"),
        ({"network": stax.serial(stax.Conv(2, (2,), padding="SAME"), stax.Relu()), "input_shape": (1, 3)},
         r"the network's kernel has shape \(6, 6, 3, 3\), but a scikit-learn kernel needs one number per pair of examples, \(6, 6\); end the network with"),
    ],
)
def test_bad_parameters_fail_at_fit_with_the_fix(params, message):
    X, y = RNG.standard_normal((6, 3)), RNG.standard_normal(6)
    with pytest.raises(ValueError if "network must" not in message else TypeError, match=message):
        NTKRegressor(**params).fit(X, y)


def test_other_errors():
    X = RNG.standard_normal((6, 3))
    with pytest.raises(ValueError, match=r"NTKClassifier.fit: y has 1 class \('a'\); a classifier needs at least 2 classes"):
        NTKClassifier().fit(X, ["a"] * 6)
    model = NTKRegressor().fit(X, RNG.standard_normal(6))
    with pytest.raises(ValueError, match=r"at most one of return_std and return_cov can be True"):
        model.predict(X, return_std=True, return_cov=True)
    with pytest.raises(ValueError, match=r"NTKRegressor.fit: gradient_descent_mse_ensemble: the train-train 'ntk' kernel \(\+ diag_reg\) is not positive definite"):
        NTKRegressor(diag_reg=0.0).fit(np.vstack([X, X]), RNG.standard_normal(12))


def test_impossible_memory_fails_before_allocating(monkeypatch):
    """With 1 GB free, 10,000 examples (5 arrays of 0.8 GB: two kernels and the
    factorisation) raise a MemoryError naming the subset size that fits (isqrt(2³⁰/40) = 5181)."""
    monkeypatch.setattr("tangents._sklearn._common.available_memory", lambda device: 2**30)
    X, y = np.zeros((10_000, 2)), np.arange(10_000.0)
    with pytest.raises(MemoryError, match=r"NTKRegressor.fit: 10000 training examples need at least 3.7 GB \(5 arrays of "
                       r"10000 x 10000 float64 .*only 1.0 GB is free on cpu; fit on a random subset of at most ~5181 examples"):
        NTKRegressor().fit(X, y)


def test_predictions_in_blocks_of_test_points(monkeypatch):
    """Test points are predicted in blocks that bound the (B, N) test-train arrays: with
    blocks of 3 rows, means and std equal the single-block ones (same arithmetic per row;
    measured 1e-15 relative)."""
    X, y = RNG.standard_normal((20, 3)), RNG.standard_normal(20)
    X_test = RNG.standard_normal((10, 3))
    model = NTKRegressor(diag_reg=1e-2).fit(X, y)
    mean, std = model.predict(X_test, return_std=True)
    classifier = NTKClassifier().fit(X, y > 0)
    scores = classifier.decision_function(X_test)
    monkeypatch.setattr("tangents._sklearn._common._TEST_BLOCK_BYTES", 8 * 20 * 3)  # 3 rows of 20 train points
    mean_b, std_b = model.predict(X_test, return_std=True)
    assert np.allclose(mean_b, mean, rtol=1e-12, atol=1e-14) and np.allclose(std_b, std, rtol=1e-12, atol=1e-14)
    assert np.allclose(classifier.decision_function(X_test), scores, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- the GP kernel


def test_kernel_hyperparameters_on_the_log_scale():
    net = stax.serial(stax.Dense(8, 1.5, 0.0), stax.Abs(), stax.Dense(8, 1.2, 0.3), stax.LeakyRelu(0.1), stax.Dense(1, 2.0))
    kernel = InfiniteWidthKernel(net, fixed=("2.b_std",))
    # b_std=0 cannot be on a log scale; Abs has no parameters; 2.b_std is fixed by request.
    assert [h.name for h in kernel.hyperparameters if not h.fixed] == ["0.W_std", "2.W_std", "3.a", "4.W_std"]
    assert [h.name for h in kernel.hyperparameters if h.fixed] == ["0.b_std", "2.b_std"]
    assert np.allclose(kernel.theta, np.log([1.5, 1.2, 0.1, 2.0]))
    assert np.allclose(kernel.bounds, np.log([[1e-3, 1e3]] * 4)) and kernel.n_dims == 4
    changed = kernel.clone_with_theta(np.log([1.0, 2.0, 0.2, 0.5]))
    assert stax.hyperparameters(changed.network) == {
        "0.W_std": 1.0, "0.b_std": 0.0, "2.W_std": 2.0, "2.b_std": 0.3, "3.a": pytest.approx(0.2), "4.W_std": 0.5,
    }
    assert np.allclose(kernel.theta, np.log([1.5, 1.2, 0.1, 2.0]))  # the original is unchanged
    assert InfiniteWidthKernel(net, hyperparameter_bounds="fixed").n_dims == 0
    assert clone(kernel) == kernel and pickle.loads(pickle.dumps(kernel)) == kernel and changed != kernel
    assert not kernel.is_stationary() and kernel.requires_vector_input
    assert "InfiniteWidthKernel(nngp: 0.W_std=1.5" in repr(kernel)


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_kernel_values_gradient_and_diagonal(get):
    """K equals kernel_fn; eval_gradient equals central differences in theta (step 1e-6,
    error ~1e-9 relative, measured 2e-10); diag equals the diagonal of K. A CNN on flattened
    images through input_shape."""
    images = RNG.standard_normal((7, 2, 4, 4))
    cnn = stax.serial(stax.Conv(4, (3, 3), padding="SAME", W_std=1.4, b_std=0.2), stax.Erf(a=1.1),
                      stax.GlobalAvgPool(), stax.Dense(1, 1.2, 0.1))
    kernel = InfiniteWidthKernel(cnn, get=get, input_shape=(2, 4, 4))
    X = images.reshape(7, 32)
    k, gradient = kernel(X, eval_gradient=True)
    assert np.allclose(k, _kernel(cnn, images, None, get), rtol=1e-12)
    assert np.allclose(kernel(X[:3], X), _kernel(cnn, images[:3], images, get), rtol=1e-12)
    assert gradient.shape == (7, 7, kernel.n_dims) and kernel.n_dims == 6  # Erf's c = 0 stays fixed
    step = 1e-6
    for j in range(kernel.n_dims):
        up, down = kernel.theta.copy(), kernel.theta.copy()
        up[j] += step
        down[j] -= step
        fd = (kernel.clone_with_theta(up)(X) - kernel.clone_with_theta(down)(X)) / (2 * step)
        assert np.abs(gradient[:, :, j] - fd).max() <= 1e-6 * max(np.abs(fd).max(), 1e-3)
    assert np.allclose(kernel.diag(X), np.diag(k), rtol=1e-12)


def test_gaussian_process_regressor_tunes_the_kernel():
    """Composed with WhiteKernel and ConstantKernel, scikit-learn's GP tunes the network's
    hyperparameters: the log marginal likelihood rises from its starting value, its reported
    value is predict.log_marginal_likelihood of the tuned kernel matrix (two implementations,
    measured 1e-12 relative), and the tuned network is reachable as gp.kernel_.k1.k2.network."""
    X = RNG.standard_normal((30, 2))
    y = np.sin(2 * X[:, 0]) + 0.1 * RNG.standard_normal(30)
    net = stax.serial(stax.Dense(8, 1.0, 0.5), stax.Erf(), stax.Dense(1, 1.0))
    kernel = ConstantKernel() * InfiniteWidthKernel(net, fixed=("1.a", "1.c")) + WhiteKernel()
    gp = GaussianProcessRegressor(kernel, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a bound reached is not an error here
        gp.fit(X, y)
    start = gp.log_marginal_likelihood(gp.kernel.theta)
    assert gp.log_marginal_likelihood_value_ > start + 1.0  # measured +19
    tuned = gp.kernel_.k1.k2.network
    assert stax.hyperparameters(tuned)["0.W_std"] != 1.0
    k = gp.kernel_.k1(X)
    noise = gp.kernel_.k2.noise_level + gp.alpha
    ours = predict.log_marginal_likelihood(torch.tensor(k), torch.tensor(y), noise, diag_reg_absolute_scale=True)
    assert float(ours) == pytest.approx(gp.log_marginal_likelihood_value_, rel=1e-9)


def test_gaussian_process_classifier_takes_the_kernel():
    """scikit-learn's GaussianProcessClassifier (Laplace) tunes the kernel too: iris
    versicolor vs virginica (the overlapping pair), even rows to train, odd rows to test;
    accuracy measured 0.94 (chance 0.5), the tuned log marginal likelihood above the start."""
    from sklearn.gaussian_process import GaussianProcessClassifier

    X, y = load_iris(return_X_y=True)
    X, y = StandardScaler().fit_transform(X[y > 0]), y[y > 0]
    net = stax.serial(stax.Dense(8, 1.5, 0.5), stax.Relu(), stax.Dense(1, 1.5, 0.5))
    gpc = GaussianProcessClassifier(InfiniteWidthKernel(net), random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # b_std tuned to its lower bound: not an error
        gpc.fit(X[::2], y[::2])
    assert gpc.score(X[1::2], y[1::2]) >= 0.9
    start = gpc.log_marginal_likelihood(gpc.kernel.theta)
    assert gpc.log_marginal_likelihood_value_ > start


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: InfiniteWidthKernel("mlp"), TypeError, r"InfiniteWidthKernel: network must be a tangents.stax layer"),
        (lambda: InfiniteWidthKernel(_net(), get="cov1"), ValueError, r"get must be 'nngp' or 'ntk', got 'cov1'"),
        (lambda: InfiniteWidthKernel(_net(), hyperparameter_bounds=(1.0, 0.1)), ValueError, r"hyperparameter_bounds must be 'fixed' or \(low, high\) with 0 < low < high"),
        (lambda: InfiniteWidthKernel(_net(), fixed=("5.W_std",)), ValueError, r"fixed names \['5.W_std'\], which the network does not have; its hyperparameters are 0.W_std"),
        (lambda: InfiniteWidthKernel(_net())(np.ones((2, 3)), np.ones((2, 3)), eval_gradient=True), ValueError, r"the gradient can only be evaluated when Y is None"),
        (lambda: InfiniteWidthKernel(_net())(np.array([[np.nan, 1.0]])), ValueError, r"X contains NaN or infinite values"),
        (lambda: InfiniteWidthKernel(_net()).clone_with_theta(np.zeros(2)), ValueError, r"theta: got 2 values for 4 tuned hyperparameters"),
    ],
)
def test_kernel_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_conjugate_gradient_solver_gives_the_cholesky_predictions():
    """``solver="cg"`` reaches `tangents.predict`'s conjugate gradients (tol 1e-6 on the
    residual): predictions equal the Cholesky ones; measured 2.4e-14 (regressor) and 9.7e-14
    (classifier) relative on this well-conditioned problem, so 1e-8 leaves room for CG's
    stopping point without letting a wrong solve through."""
    rng = np.random.default_rng(0)
    X, X_test = rng.standard_normal((80, 5)), rng.standard_normal((30, 5))
    y = X[:, 0] - X[:, 1] ** 2
    exact = NTKRegressor(solver="cholesky", diag_reg=1e-3).fit(X, y).predict(X_test)
    iterative = NTKRegressor(solver="cg", diag_reg=1e-3).fit(X, y).predict(X_test)
    assert np.abs(iterative - exact).max() <= 1e-8 * np.abs(exact).max()
    labels = (X[:, 0] > 0).astype(int)
    exact = NTKClassifier(solver="cholesky").fit(X, labels).decision_function(X_test)
    iterative = NTKClassifier(solver="cg").fit(X, labels).decision_function(X_test)
    assert np.abs(iterative - exact).max() <= 1e-8 * np.abs(exact).max()
