r"""``tangents``: infinite-width kernels against a finite network trained on digits.

The command line's main job, in five stages:

1. **data**: scikit-learn's handwritten digits (1,797 images of 8×8 pixels, shipped with
   scikit-learn), shuffled with ``--seed`` and split into ``--n-train`` training and the
   rest as test points. Inputs are standardised per pixel with the training set's mean
   and standard deviation; targets are one-hot vectors centred to ``e_c - 1/10``.
2. **kernels**: the NNGP 𝒦 and NTK Θ of ``serial(Dense(width), Relu()) × depth, Dense(10)``
   (NTK parameterization, ``W_std=1.5``, ``b_std=0.05``) and the infinite-width
   predictions at t = ∞ with `tangents.predict.gradient_descent_mse_ensemble`:
   ``f(x*) = K(x*, X) [K(X, X) + ε I]⁻¹ Y`` for K = 𝒦 (Bayesian posterior mean) and
   K = Θ (infinitely long gradient descent).
3. **learning rate**: gradient descent on ``L = ‖f(X) - Y‖² / (2 N C)`` (torch's
   ``MSELoss``/2, the loss neural-tangents assumes) moves the outputs by
   ``-η Θ / (N C) (f - Y)`` per step, which is stable for ``η < 2 N C / λ_max(Θ)``;
   ``--lr auto`` takes half of that, ``η = N C / λ_max(Θ)``.
4. **training**: the same architecture at width ``--width`` (``net.to_module``), trained by
   full-batch ``torch.optim.SGD`` for ``--steps`` steps. The network is centred at its
   initialisation, ``f(x) - f(x; θ₀)``: the gradients are unchanged, and its expected
   output is then exactly the ensemble mean that the NTK predicts (without centring, the
   random function at initialisation adds an O(1) offset that no width removes).
5. **NTK at the same time**: the ensemble mean after the same amount of gradient flow,
   ``f_t(x*) = Θ(x*, X) Θ⁻¹ (I - exp(-η t Θ / (N C))) Y`` with t = ``--steps``,
   compared with the trained network (same class, RMSE of the outputs).

Run ``tangents --help`` (or ``python -m tangents --help``) for the options. The arguments are
parsed before torch is imported, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from ._arguments import device as _device
from ._arguments import learning_rate_or_auto as _learning_rate
from ._arguments import non_negative_int as _non_negative_int
from ._arguments import positive_int as _positive_int

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["JobError", "Report", "build_parser", "main", "run"]

#: Layer hyperparameters of the default architecture.
W_STD = 1.5
B_STD = 0.05
#: Relative diagonal regulariser of the t = ∞ predictions (times the mean of diag K).
DIAG_REG = 1e-4
#: Size of scikit-learn's digits dataset and the number of test points we insist on.
N_DIGITS = 1797
MIN_TEST = 10
N_CLASSES = 10


class JobError(RuntimeError):
    """The main job cannot go on (a missing optional dependency, diverged training)."""


@dataclasses.dataclass(frozen=True)
class Report:
    """The numbers the main job prints (``--json`` prints them as they are here).

    Accuracies and ``agreement`` are fractions in [0, 1] of the ``n_test`` test points;
    ``rmse_vs_ntk`` is the root mean square, over test points and the 10 outputs, of
    (finite network − NTK prediction at the same time); ``timings`` are wall-clock seconds
    per stage.
    """

    n_train: int
    n_test: int
    width: int
    depth: int
    steps: int
    lr: float
    lr_auto: bool
    ntk_lambda_max: float
    dtype: str
    device: str
    seed: int
    accuracy_nngp: float
    accuracy_ntk: float
    accuracy_ntk_at_steps: float
    accuracy_finite: float
    agreement: float
    rmse_vs_ntk: float
    target_rms: float
    train_loss_finite: float
    train_loss_ntk_at_steps: float
    timings: dict[str, float]

    def to_text(self) -> str:
        """A short human-readable report."""
        lr_note = f" (auto: N C / lambda_max(NTK), lambda_max = {self.ntk_lambda_max:.4g})" if self.lr_auto else ""
        rows = [
            "tangents: infinite-width NNGP/NTK vs a finite network on scikit-learn digits",
            f"  data      {self.n_train} train / {self.n_test} test, 64 pixels, 10 classes "
            f"(seed {self.seed}, {self.dtype}, {self.device})",
            f"  network   [Dense({self.width}, W_std={W_STD}, b_std={B_STD}), Relu] x {self.depth}"
            f" -> Dense(10), NTK parameterization",
            f"  training  {self.steps} full-batch gradient-descent steps on MSE, lr = {self.lr:.4g}{lr_note}",
            "",
            "test accuracy",
            f"  NNGP, t = inf                        {self.accuracy_nngp:.4f}",
            f"  NTK,  t = inf                        {self.accuracy_ntk:.4f}",
            f"  NTK,  t = {self.steps} steps{' ' * max(0, 21 - len(str(self.steps)))}"
            f"{self.accuracy_ntk_at_steps:.4f}",
            f"  finite network (width {self.width}){' ' * max(0, 14 - len(str(self.width)))}"
            f"{self.accuracy_finite:.4f}",
            "",
            f"finite network vs NTK after the same training (t = {self.steps} steps)",
            f"  same predicted class                 {self.agreement:.4f}"
            f"  ({round(self.agreement * self.n_test)}/{self.n_test} test points)",
            f"  RMSE of the 10 outputs               {self.rmse_vs_ntk:.4f}"
            f"  (targets' RMS: {self.target_rms:.4f})",
            f"  training loss: finite {self.train_loss_finite:.3e}, NTK {self.train_loss_ntk_at_steps:.3e}",
            "",
            "timings (s)",
        ]
        for stage, seconds in self.timings.items():
            rows.append(f"  {stage:<36} {seconds:.2f}")
        return "\n".join(rows)


# ---------------------------------------------------------------------- argument parsing


def _n_train(text: str) -> int:
    value = _positive_int(text)
    if not 2 <= value <= N_DIGITS - MIN_TEST:
        raise argparse.ArgumentTypeError(
            f"expected between 2 and {N_DIGITS - MIN_TEST} (digits has {N_DIGITS} images and at "
            f"least {MIN_TEST} are kept for testing), got {value}"
        )
    return value


_DTYPES = ("float32", "float64")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_device(text: str | None) -> torch.device:
    """The device to run on; CUDA only if torch can use it here."""
    import torch

    device = torch.device(_default_device() if text is None else text)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise JobError(f"--device {text!r} was asked for but CUDA is not available here; use --device cpu")
    return device


def build_parser(prog: str = "tangents", commands: str = "") -> argparse.ArgumentParser:
    """The main job's argument parser (``tangents`` with no command, or ``tangents run``).

    Args:
        prog: the program name shown in usage and errors.
        commands: a text listing the other commands, shown at the end of ``--help``.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Infinite-width NNGP and NTK predictions on scikit-learn's digits, compared with the "
            "same fully-connected ReLU network trained at finite width by full-batch gradient "
            "descent. Prints test accuracies, how often the finite network agrees with the NTK, "
            "the RMSE between them, and the time of each stage."
        ),
        epilog=(
            "Example: tangents --n-train 500 --width 1024 --steps 500.\n"
            "The defaults finish in well under a minute on 2 CPU cores." + (f"\n\n{commands}" if commands else "")
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--n-train",
        type=_n_train,
        default=1000,
        help=f"number of training images (2 to {N_DIGITS - MIN_TEST}); the remaining images of the "
        f"{N_DIGITS} are the test set (default: %(default)s)",
    )
    parser.add_argument(
        "--width", type=_positive_int, default=512, help="hidden width of the finite network; the kernels do not depend on it (default: %(default)s)"
    )
    parser.add_argument(
        "--depth", type=_positive_int, default=2, help="number of hidden Dense+Relu layers (default: %(default)s)"
    )
    parser.add_argument(
        "--steps", type=_non_negative_int, default=300, help="full-batch gradient-descent steps of the finite network (default: %(default)s)"
    )
    parser.add_argument(
        "--lr",
        type=_learning_rate,
        default=None,
        metavar="LR",
        help="learning rate of gradient descent on the MSE loss ||f(X) - Y||^2 / (2 N C), or 'auto' for "
        "N C / lambda_max(NTK), half the largest stable rate of the infinite-width network (default: auto)",
    )
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the train/test split and of the network's initialisation (default: %(default)s)")
    parser.add_argument(
        "--dtype", choices=_DTYPES, default="float32", help="floating-point precision of every stage (default: %(default)s)"
    )
    parser.add_argument(
        "--device",
        type=_device,
        default=None,
        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--threads",
        type=_non_negative_int,
        default=1,
        help="CPU threads for torch; 0 keeps torch's default (one per core). The default, 1, is "
        "fastest on a shared machine: this job's matrices are small, and idle OpenMP threads "
        "that spin-wait slow it down several-fold when other processes hold the cores "
        "(default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar or stage messages on stderr, only the report"
    )
    return parser


def _version() -> str:
    from .._version import __version__

    return __version__


# ---------------------------------------------------------------------- the job


def _load_digits(
    n_train: int, seed: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised digits split into ``x_train (N, 64)``, ``y_train (N, 10)``, ``x_test, labels_test``.

    ``y_train`` holds centred one-hot targets ``e_c - 1/10``; ``labels_test (M,)`` the classes.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise JobError(
            "the digits dataset comes with scikit-learn, which is not installed; "
            "install it with: pip install 'tangents[examples]' (or pip install scikit-learn)"
        ) from None
    import numpy as np
    import torch

    x, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, labels = x[order], labels[order]
    x_train, x_test = x[:n_train], x[n_train:]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0  # border pixels that are blank in every training image
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train = np.eye(N_CLASSES)[labels[:n_train]] - 1.0 / N_CLASSES

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype, device=device)

    return tensor(x_train), tensor(y_train), tensor(x_test), torch.as_tensor(labels[n_train:], device=device)


def _network(width: int, depth: int) -> Any:
    from .. import stax

    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=W_STD, b_std=B_STD), stax.Relu()]
    return stax.serial(*layers, stax.Dense(N_CLASSES, W_std=W_STD, b_std=B_STD))


def _field(out: Any, name: str) -> torch.Tensor:
    """``out.name`` for a named tuple of predictions, ``out`` itself for a single one."""
    return getattr(out, name) if hasattr(out, name) else out


def _accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    return (outputs.argmax(dim=-1) == labels).double().mean().item()


class _Stages:
    """Times the stages of the job and announces them on stderr unless quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.timings: dict[str, float] = {}

    def start(self, name: str, message: str) -> None:
        if not self.quiet:
            print(f"[tangents] {message}", file=sys.stderr, flush=True)
        self._name, self._t0 = name, time.perf_counter()

    def stop(self, device: torch.device) -> None:
        import torch

        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.timings[self._name] = time.perf_counter() - self._t0


def run(
    n_train: int = 1000,
    width: int = 512,
    depth: int = 2,
    steps: int = 300,
    lr: float | None = None,
    seed: int = 0,
    dtype: torch.dtype | str = "float32",
    device: torch.device | str | None = None,
    quiet: bool = False,
) -> Report:
    """Runs the main job (see the module docstring) and returns its `Report`.

    Args:
        n_train: number of training images; the other ``1797 - n_train`` are test points.
        width: hidden width of the finite network.
        depth: number of hidden ``Dense + Relu`` layers.
        steps: full-batch gradient-descent steps.
        lr: learning rate, or ``None`` for ``N·C / λ_max(Θ)``.
        seed: seed of the split and of the initialisation.
        dtype: precision of every stage, a ``torch.dtype`` or its name (``"float32"``).
        device: torch device (default: CUDA if available, else CPU).
        quiet: no progress bar or stage messages on stderr.
    """
    for name, value, low in (("n_train", n_train, 2), ("width", width, 1), ("depth", depth, 1), ("steps", steps, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"run: {name} must be an integer >= {low}, got {value!r}.")
    if n_train > N_DIGITS - MIN_TEST:
        raise ValueError(f"run: n_train must be at most {N_DIGITS - MIN_TEST} (digits has {N_DIGITS} images), got {n_train}.")
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"run: lr must be a positive number or None (automatic), got {lr!r}.")

    import torch
    from tqdm import tqdm

    from ..predict import gradient_descent_mse_ensemble, max_learning_rate

    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"run: dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}.")
        dtype = getattr(torch, dtype)
    device = _check_device(None if device is None else str(device))
    stages = _Stages(quiet)
    t_start = time.perf_counter()

    stages.start("data", f"loading digits: {n_train} training images")
    x_train, y_train, x_test, labels_test = _load_digits(n_train, seed, dtype, device)
    net = _network(width, depth)
    stages.stop(device)

    stages.start("kernels and t=inf predictions", "NNGP and NTK, infinite-width predictions at t = inf")
    predict_fn = gradient_descent_mse_ensemble(net.kernel_fn, x_train, y_train, diag_reg=DIAG_REG)
    at_inf = predict_fn(x_test=x_test, get=("nngp", "ntk"))
    nngp_inf, ntk_inf = _field(at_inf, "nngp"), _field(at_inf, "ntk")
    stages.stop(device)

    stages.start("learning rate (NTK lambda_max)", "largest eigenvalue of the training NTK")
    max_lr = max_learning_rate(net.kernel_fn(x_train, None, "ntk"), y_train.numel())  # 2 N C / λ_max
    lambda_max = 2 * y_train.numel() / max_lr
    lr_auto = lr is None
    if lr is None:
        lr = max_lr / 2
    stages.stop(device)

    stages.start("training the finite network", f"training width {width} for {steps} steps, lr = {lr:.4g}")
    model = net.to_module((-1, x_train.shape[1]), seed=seed, dtype=dtype).to(device)
    with torch.no_grad():
        f0_train, f0_test = model(x_train), model(x_test)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    # The bar shows on a terminal only (disable=None), so logs and CI output stay readable.
    bar = tqdm(range(steps), desc="training", unit="step", disable=True if quiet else None, leave=False, file=sys.stderr)
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        loss = 0.5 * torch.mean((model(x_train) - f0_train - y_train) ** 2)
        loss.backward()
        optimizer.step()
        if not bar.disable and step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.3e}", refresh=False)
    with torch.no_grad():
        finite_train = model(x_train) - f0_train
        finite_test = model(x_test) - f0_test
    # Centred at initialisation, the loss starts at mean(Y²)/2 and gradient descent at a
    # stable rate only lowers it; ten times that is divergence, not noise.
    initial_loss = 0.5 * torch.mean(y_train**2).item()
    final_loss = 0.5 * torch.mean((finite_train - y_train) ** 2).item()
    if not (torch.isfinite(finite_test).all() and final_loss < 10 * initial_loss):
        raise JobError(
            f"training diverged at lr = {lr:.4g} (the infinite-width network is stable "
            f"below 2 N C / lambda_max(NTK) = {max_lr:.4g}); use a smaller --lr or --lr auto"
        )
    stages.stop(device)

    stages.start("NTK at the same training time", f"NTK prediction after t = {steps} steps")
    # neural-tangents' convention: outputs follow exp(-η t Θ / y_train.size), with η t = steps · lr.
    ntk_test_t = _field(predict_fn(t=steps * lr, x_test=x_test, get="ntk"), "ntk")
    ntk_train_t = _field(predict_fn(t=steps * lr, x_test=x_train, get="ntk"), "ntk")
    stages.stop(device)
    timings = dict(stages.timings)
    timings["total"] = time.perf_counter() - t_start

    return Report(
        n_train=n_train,
        n_test=len(labels_test),
        width=width,
        depth=depth,
        steps=steps,
        lr=float(lr),
        lr_auto=lr_auto,
        ntk_lambda_max=lambda_max,
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        seed=seed,
        accuracy_nngp=_accuracy(nngp_inf, labels_test),
        accuracy_ntk=_accuracy(ntk_inf, labels_test),
        accuracy_ntk_at_steps=_accuracy(ntk_test_t, labels_test),
        accuracy_finite=_accuracy(finite_test, labels_test),
        agreement=(finite_test.argmax(-1) == ntk_test_t.argmax(-1)).double().mean().item(),
        rmse_vs_ntk=torch.sqrt(torch.mean((finite_test - ntk_test_t).double() ** 2)).item(),
        target_rms=torch.sqrt(torch.mean(y_train.double() ** 2)).item(),
        train_loss_finite=final_loss,
        train_loss_ntk_at_steps=0.5 * torch.mean((ntk_train_t - y_train).double() ** 2).item(),
        timings=timings,
    )


def main(argv: Sequence[str] | None = None, prog: str = "tangents", commands: str = "") -> int:
    """The main job from the command line (``tangents``, ``tangents run``, ``python -m tangents``).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        prog: the program name shown in usage and errors.
        commands: a text listing the other commands, for ``--help``.

    Returns:
        0 on success; 1 with a message on stderr if the job fails (`JobError`). Bad options
        exit with argparse's status 2 and a message on stderr, before torch is imported.
    """
    parser = build_parser(prog, commands)
    args = parser.parse_args(argv)
    try:
        _check_device(args.device)
    except JobError as error:
        parser.error(str(error))
    import torch

    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(
            n_train=args.n_train,
            width=args.width,
            depth=args.depth,
            steps=args.steps,
            lr=args.lr,
            seed=args.seed,
            dtype=args.dtype,
            device=args.device,
            quiet=args.quiet,
        )
    except JobError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(previous_threads)  # main() may run inside a larger program
    print(json.dumps(dataclasses.asdict(report), indent=2) if args.json else report.to_text())
    return 0
