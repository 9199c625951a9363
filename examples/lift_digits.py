r"""A torch model, its infinite-width limit, and the trained model, on scikit-learn's digits.

The model is plain torch: a residual MLP with torch's default initialisation,

    h = Linear(64, w)(x);  h = h + Linear(w, w)(relu(Linear(w, w)(relu(h))));  f = Linear(w, 10)(relu(h)).

``tangents.from_torch`` lifts it (standard parameterization: the model as torch initialises
it) and its kernels give the infinite-width predictions: the NNGP and the NTK at t = ∞, and
the NTK after the training time of the finite model. The model itself (width 512) is then
trained by full-batch gradient descent on the MSE loss with the learning rate N C / λ_max(Θ)
(half the largest stable one of the lifted NTK), centred at its initialisation as the
``tangents`` command does, and compared with the NTK's prediction after the same time.

Run from the repository root (needs the ``examples`` extra: scikit-learn)::

    .venv/bin/python examples/lift_digits.py            # --width, --steps, --n-train, --seed
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import tangents
from tangents.predict import gradient_descent_mse_ensemble, max_learning_rate


class ResidualMLP(nn.Module):
    """A residual MLP written in plain torch (torch's default initialisation)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.out = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.block(h)
        return self.out(F.relu(h))


def load_digits(n_train: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised digits: ``x_train (N, 64)``, centred one-hot ``y_train (N, 10)``, ``x_test``, test labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    x, labels = sklearn_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, labels = x[order], labels[order]
    mean, std = x[:n_train].mean(0), x[:n_train].std(0)
    std[std == 0] = 1.0
    x = (x - mean) / std
    y_train = np.eye(10)[labels[:n_train]] - 0.1
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return as_tensor(x[:n_train]), as_tensor(y_train), as_tensor(x[n_train:]), torch.as_tensor(labels[n_train:])


def accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    return (outputs.argmax(-1) == labels).double().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    timings = {}

    t = time.perf_counter()
    x_train, y_train, x_test, labels = load_digits(args.n_train, args.seed)
    torch.manual_seed(args.seed)
    model = ResidualMLP(args.width)
    lifted = tangents.from_torch(model, x_train[:2])  # parameterization="standard": the model as initialised
    print(lifted)
    timings["lift"] = time.perf_counter() - t

    t = time.perf_counter()
    predict_fn = gradient_descent_mse_ensemble(lifted.kernel_fn, x_train, y_train, diag_reg=1e-4)
    nngp_inf, ntk_inf = predict_fn(x_test=x_test, get=("nngp", "ntk"))
    max_lr = max_learning_rate(lifted.kernel_fn(x_train, None, "ntk"), y_train.numel())  # 2 N C / λ_max
    lr = max_lr / 2
    timings["kernels"] = time.perf_counter() - t

    t = time.perf_counter()
    with torch.no_grad():
        f0_train, f0_test = model(x_train), model(x_test)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(args.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = 0.5 * torch.mean((model(x_train) - f0_train - y_train) ** 2)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        finite = model(x_test) - f0_test
    timings["training"] = time.perf_counter() - t

    ntk_t = predict_fn(t=args.steps * lr, x_test=x_test, get="ntk")
    same = (finite.argmax(-1) == ntk_t.argmax(-1)).double().mean().item()
    rmse = torch.sqrt(torch.mean((finite - ntk_t) ** 2)).item()
    print(f"\ndigits: {args.n_train} train / {len(labels)} test; ResidualMLP width {args.width}; "
          f"{args.steps} steps of gradient descent, lr = {lr:.4g} (N C / lambda_max of the lifted NTK)")
    print(f"  NNGP, t = inf                  {accuracy(nngp_inf, labels):.4f}")
    print(f"  NTK,  t = inf                  {accuracy(ntk_inf, labels):.4f}")
    print(f"  NTK,  t = {args.steps} steps           {accuracy(ntk_t, labels):.4f}")
    print(f"  trained torch model            {accuracy(finite, labels):.4f}")
    print(f"  same class as the NTK          {same:.4f}   RMSE of the outputs {rmse:.4f} (targets' RMS 0.3000)")
    print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
