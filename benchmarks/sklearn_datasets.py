"""scikit-learn's bundled datasets: tangents' estimators and GP kernel against SVC/SVR, random
forests and a Gaussian process with an RBF kernel, measured in one run.

Datasets: digits, breast_cancer, wine, iris (classification: accuracy) and diabetes
(regression: R²), each split 70/30 (stratified for classification) with ``random_state=0``
and standardised with the training set's mean and deviation. Models, all with their
defaults unless stated:

* ``NTK``: ``tangents.sklearn.NTKClassifier()`` / ``NTKRegressor()``;
* ``NNGP``: the same with ``kernel="nngp"``;
* ``SVC`` / ``SVR``;
* ``RandomForest``: ``RandomForestClassifier/Regressor(random_state=0, n_jobs=threads)``;
* ``GP (RBF)``: ``GaussianProcessRegressor(ConstantKernel() * RBF() + WhiteKernel(),
  normalize_y=True)`` (on centred one-hot targets, argmax, for classification);
* ``GP (tangents)``: the same GP with ``InfiniteWidthKernel(net) + WhiteKernel()`` and the
  estimators' default network ``[Dense(512, 1.5, 0.5), Relu] x 2, Dense(1, 1.5, 0.5)`` (NNGP),
  ``optimizer=None`` (before tuning) and the default L-BFGS-B (after tuning its seven
  hyperparameters: six W_std/b_std and the noise): log marginal likelihood and test score.

Protocol, the same for every model: ``--threads`` threads (torch, BLAS via the environment,
forests' ``n_jobs``), one untimed warm-up fit+predict, then the median of ``--repeats``
timed fit+predict calls; the tuned GP is fitted once (its time is that one fit).

Run (about 30-60 minutes on 2 cores, most of it tuning the tangents GP on digits)::

    .venv/bin/python benchmarks/sklearn_datasets.py            # full
    .venv/bin/python benchmarks/sklearn_datasets.py --quick    # subsets, a minute: checks the script

It prints two markdown tables and writes ``benchmarks/results/sklearn_datasets.json`` (with
the git revision measured). Scores do not depend on the machine; seconds do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

DATASETS = ("digits", "breast_cancer", "wine", "iris", "diabetes")
MODELS = ("NTK", "NNGP", "SVC/SVR", "RandomForest", "GP (RBF)")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="at most 150 training points, GP tuning capped at 5 iterations")
    parser.add_argument("--threads", type=int, default=2, help="threads for every model (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per model after the warm-up (default 3)")
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--no-tuning", action="store_true", help="skip the tangents GP before/after tuning")
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/sklearn_datasets.json)")
    return parser.parse_args()


def main() -> None:
    args = _parse()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)  # before numpy, scipy and torch load their BLAS
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.path.insert(0, str(HERE))

    import warnings

    import numpy as np
    import torch
    from _common import code_state, load_average, markdown_table
    from sklearn import datasets as sk_datasets
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, SVR

    import tangents
    from tangents import stax
    from tangents.sklearn import InfiniteWidthKernel, NTKClassifier, NTKRegressor

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    warnings.simplefilter("ignore", ConvergenceWarning)  # bounds reached while tuning are reported in the JSON

    class OneHotGP:
        """A GP regressor on centred one-hot targets, predicting the argmax (classification)."""

        def __init__(self, make: Callable[[], Any]) -> None:
            self.make = make

        def fit(self, X: np.ndarray, y: np.ndarray) -> OneHotGP:
            self.classes_, labels = np.unique(y, return_inverse=True)
            self.gp_ = self.make().fit(X, np.eye(len(self.classes_))[labels] - 1 / len(self.classes_))
            return self

        def predict(self, X: np.ndarray) -> np.ndarray:
            return self.classes_[np.argmax(self.gp_.predict(X), axis=1)]

    def rbf_gp() -> GaussianProcessRegressor:
        return GaussianProcessRegressor(ConstantKernel() * RBF() + WhiteKernel(), normalize_y=True, random_state=0)

    def load(name: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        X, y = getattr(sk_datasets, f"load_{name}")(return_X_y=True)
        task = "regression" if name == "diabetes" else "classification"
        X_tr, X_te, y_tr, y_te = train_test_split(
            X, y, test_size=0.3, random_state=0, stratify=None if task == "regression" else y
        )
        if args.quick:
            X_tr, y_tr, X_te, y_te = X_tr[:150], y_tr[:150], X_te[:100], y_te[:100]
        scaler = StandardScaler().fit(X_tr)
        return task, scaler.transform(X_tr), scaler.transform(X_te), y_tr, y_te

    def score(task: str, predicted: np.ndarray, truth: np.ndarray) -> float:
        if task == "classification":
            return float(np.mean(predicted == truth))
        return float(1 - np.sum((predicted - truth) ** 2) / np.sum((truth - truth.mean()) ** 2))

    def models(task: str) -> dict[str, Callable[[], Any]]:
        if task == "classification":
            return {
                "NTK": lambda: NTKClassifier(),
                "NNGP": lambda: NTKClassifier(kernel="nngp"),
                "SVC/SVR": lambda: SVC(),
                "RandomForest": lambda: RandomForestClassifier(random_state=0, n_jobs=args.threads),
                "GP (RBF)": lambda: OneHotGP(rbf_gp),
            }
        return {
            "NTK": lambda: NTKRegressor(),
            "NNGP": lambda: NTKRegressor(kernel="nngp"),
            "SVC/SVR": lambda: SVR(),
            "RandomForest": lambda: RandomForestRegressor(random_state=0, n_jobs=args.threads),
            "GP (RBF)": rbf_gp,
        }

    def measure(make: Callable[[], Any], task: str, data: tuple) -> dict[str, Any]:
        _, X_tr, X_te, y_tr, y_te = data
        make().fit(X_tr[:50], y_tr[:50]).predict(X_te[:10])  # warm-up: imports, allocator, threads
        times, predicted = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            predicted = make().fit(X_tr, y_tr).predict(X_te)
            times.append(time.perf_counter() - start)
        return {"score": score(task, predicted, y_te), "seconds": statistics.median(times), "times_s": times}

    def tangents_gp(task: str, data: tuple) -> dict[str, Any]:
        """The GP with the tangents kernel, before and after tuning its hyperparameters."""
        _, X_tr, X_te, y_tr, y_te = data
        net = stax.serial(stax.Dense(512, 1.5, 0.5), stax.Relu(), stax.Dense(512, 1.5, 0.5), stax.Relu(),
                          stax.Dense(1, 1.5, 0.5))
        out: dict[str, Any] = {}
        calls = {"n": 0}

        def optimizer(obj_func: Callable, initial_theta: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, float]:
            from scipy.optimize import minimize

            def counted(theta: np.ndarray) -> Any:
                calls["n"] += 1
                return obj_func(theta, eval_gradient=True)

            options = {"maxiter": 5} if args.quick else {}
            result = minimize(counted, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds, options=options)
            return result.x, result.fun

        for stage, opt in (("before", None), ("after", optimizer)):
            def make() -> GaussianProcessRegressor:
                kernel = InfiniteWidthKernel(net) + WhiteKernel()
                return GaussianProcessRegressor(kernel, normalize_y=True, optimizer=opt, random_state=0)

            model = OneHotGP(make) if task == "classification" else make()
            start = time.perf_counter()
            predicted = model.fit(X_tr, y_tr).predict(X_te)
            seconds = time.perf_counter() - start
            gp = model.gp_ if task == "classification" else model
            out[stage] = {
                "log_marginal_likelihood": float(gp.log_marginal_likelihood_value_),
                "score": score(task, predicted, y_te),
                "seconds": seconds,
                "kernel": repr(gp.kernel_),
            }
        out["after"]["evaluations"] = calls["n"]
        return out

    results: dict[str, Any] = {
        "code": code_state(),
        "tangents": tangents.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "quick": args.quick,
        "load_start": load_average(),
        "datasets": {},
    }
    print(f"threads {args.threads}, repeats {args.repeats}, load average at start {results['load_start']}", flush=True)
    for name in args.datasets:
        data = load(name)
        task = data[0]
        entry: dict[str, Any] = {"task": task, "n_train": len(data[1]), "n_test": len(data[2]), "models": {}}
        for model, make in models(task).items():
            entry["models"][model] = measure(make, task, data)
            print(f"  {name:<14} {model:<13} score {entry['models'][model]['score']:.4f}  "
                  f"{entry['models'][model]['seconds']:.3f} s", flush=True)
        if not args.no_tuning:
            entry["tangents_gp"] = tangents_gp(task, data)
            gp = entry["tangents_gp"]
            print(f"  {name:<14} GP (tangents) LML {gp['before']['log_marginal_likelihood']:.1f} -> "
                  f"{gp['after']['log_marginal_likelihood']:.1f}, score {gp['before']['score']:.4f} -> "
                  f"{gp['after']['score']:.4f}, {gp['after']['seconds']:.1f} s", flush=True)
        results["datasets"][name] = entry
    results["load_end"] = load_average()

    rows = []
    for name, entry in results["datasets"].items():
        metric = "accuracy" if entry["task"] == "classification" else "R²"
        rows.append([f"{name} ({entry['n_train']}/{entry['n_test']}, {metric})"]
                    + [f"{entry['models'][m]['score']:.3f} ({entry['models'][m]['seconds']:.2f} s)" for m in MODELS])
    print()
    print(markdown_table(["dataset (train/test, score)", "NTK", "NNGP", "SVC / SVR", "RandomForest", "GP (RBF)"], rows))
    if not args.no_tuning:
        rows = []
        for name, entry in results["datasets"].items():
            gp = entry["tangents_gp"]
            rows.append([name, f"{gp['before']['log_marginal_likelihood']:.1f}", f"{gp['before']['score']:.3f}",
                         f"{gp['after']['log_marginal_likelihood']:.1f}", f"{gp['after']['score']:.3f}",
                         f"{gp['after']['seconds']:.1f}", str(gp["after"]["evaluations"])])
        print()
        print(markdown_table(["dataset", "LML before", "score before", "LML after", "score after", "tuning (s)",
                              "evaluations"], rows))
    output = Path(args.output) if args.output else RESULTS / ("sklearn_datasets_quick.json" if args.quick else "sklearn_datasets.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
