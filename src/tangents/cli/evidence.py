"""``tangents evidence --out DIR``: figures and numbers reproducing Jacot et al. and Lee et al.

Trains finite networks of several widths on points of the unit circle and writes five PNG
figures and ``report.md`` (the numbers, the seeds, the version) to ``DIR``; see
`tangents.evidence` for what is measured. Arguments are parsed before torch or matplotlib
is imported, so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._arguments import device as _device
from ._arguments import learning_rate_or_auto as _learning_rate

__all__ = ["build_parser", "load_network", "main"]

_NETWORK = re.compile(r"(?P<module>[^:]+):(?P<function>[A-Za-z_][A-Za-z0-9_]*)")


def _int_list(minimum_count: int, low: int = 1) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 100,500,2000, got {text!r}") from None
        if any(v < low for v in values):
            raise argparse.ArgumentTypeError(f"expected integers >= {low}, got {text!r}")
        if len(set(values)) < minimum_count:
            raise argparse.ArgumentTypeError(f"expected at least {minimum_count} different values, got {text!r}")
        return values

    return parse


def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"expected an integer between {low} and {high}, got {value}" if high is not None
                else f"expected an integer >= {low}, got {value}"
            )
        return value

    return parse


def _network(text: str) -> str:
    if not _NETWORK.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(
            f"expected MODULE:FUNCTION (e.g. mypackage.nets:wide_relu or nets.py:wide_relu), got {text!r}"
        )
    return text.strip()


def build_parser(prog: str = "tangents evidence") -> argparse.ArgumentParser:
    """The argument parser of ``tangents evidence``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Figures and numbers that reproduce the claims of Jacot et al. (2018) and Lee et al. (2019) "
            "with finite networks: the NTK on the unit circle at initialisation and after training, "
            "outputs during training against the kernel's dynamics, convergence of the NTK with width "
            "(log-log slope about -1/2), lazy training, network vs linearisation vs NTK prediction, and "
            "the NTK's spectrum with the residual along its eigenvectors. Writes PNGs and report.md to --out."
        ),
        epilog=(
            "Examples:\n"
            "  tangents evidence --out evidence                      # the defaults, a few minutes on 2 CPU cores\n"
            "  tangents evidence --out quick --widths 64,256,1024 --circle-widths 64,1024 --networks 4 --steps 50\n"
            "  tangents evidence --out mine --network nets.py:my_net  # my_net(width) returns a stax layer\n"
            "Every run reports its seeds: --seed S --networks N uses network seeds S..S+N-1 and data seed S."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the PNGs and report.md (created if missing)")
    parser.add_argument(
        "--widths", type=_int_list(3), default=(100, 500, 2000, 10000), metavar="W1,W2,...",
        help="widths of the convergence, lazy-training and Lee et al. sweeps, at least 3 (default: 100,500,2000,10000)",
    )
    parser.add_argument(
        "--circle-widths", type=_int_list(1), default=(500, 10000), metavar="W1,W2",
        help="widths of Jacot's Figures 1 and 2, added to the sweep (default: 500,10000)",
    )
    parser.add_argument("--networks", type=_int_at_least(2), default=10, help="networks (seeds) per width, at least 2 (default: %(default)s)")
    parser.add_argument("--seed", type=_int_at_least(0), default=0, help="the first network seed and the data seed (default: %(default)s)")
    parser.add_argument("--n-train", type=_int_at_least(2, 512), default=16, help="training points on the unit circle, 2 to 512 (default: %(default)s)")
    parser.add_argument("--steps", type=_int_at_least(1), default=200, help="full-batch gradient-descent steps (default: %(default)s)")
    parser.add_argument(
        "--lr", type=_learning_rate, default=None, metavar="LR",
        help="learning rate on the loss ||f(X) - Y||^2 / (2N), or 'auto' for N / (2 lambda_max(NTK)), a quarter of the "
        "largest stable one (default: auto)",
    )
    parser.add_argument(
        "--depth", type=_int_at_least(1), default=None,
        help="hidden Dense+Relu layers of the default network (default: 1; Jacot's Figure 1 used 3, which costs "
        "width^2 parameters per extra layer)",
    )
    parser.add_argument(
        "--network", type=_network, default=None, metavar="MODULE:FUNCTION",
        help="your network instead of the default: FUNCTION(width) returns a tangents.stax layer mapping (N, 2) "
        "inputs to (N, 1) outputs; MODULE is an importable module or a .py file",
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64", help="of the finite networks (default: %(default)s)")
    parser.add_argument("--device", type=_device, default="cpu", help="torch device of the finite networks (default: %(default)s)")
    parser.add_argument(
        "--threads", type=_int_at_least(0), default=1,
        help="CPU threads for torch; 0 keeps torch's default. 1 is fastest for these small matrices on a shared "
        "machine (default: %(default)s)",
    )
    parser.add_argument("--dpi", type=_int_at_least(20, 600), default=100, help="resolution of the PNGs (default: %(default)s)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar on stderr")
    return parser


def load_network(spec: str) -> Callable[[int], Any]:
    """The function named by ``MODULE:FUNCTION`` (MODULE an importable name or a ``.py`` file).

    Raises:
        ValueError: the module cannot be imported or has no such callable.
    """
    match = _NETWORK.fullmatch(spec.strip())
    if match is None:
        raise ValueError(f"--network {spec!r}: expected MODULE:FUNCTION")
    module_name, function = match["module"], match["function"]
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise ValueError(f"--network {spec!r}: there is no file {str(path)!r}")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ValueError(f"--network {spec!r}: cannot load {str(path)!r} as a Python module")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ValueError:
        raise
    except Exception as error:  # the user's module failed to import: say which and why
        raise ValueError(f"--network {spec!r}: importing {module_name!r} failed: {type(error).__name__}: {error}") from None
    value = getattr(module, function, None)
    if not callable(value):
        raise ValueError(f"--network {spec!r}: {module_name!r} has no function {function!r} (width -> stax layer)")
    return value


def main(argv: Sequence[str] | None = None, prog: str = "tangents evidence") -> int:
    """``tangents evidence`` from the command line.

    Returns:
        0 on success; 1 with a message on stderr when the experiments cannot run (a network
        that cannot be loaded or does not fit, diverged training, matplotlib missing); bad
        options exit with argparse's status 2 before torch is imported.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.depth is not None and args.network is not None:
        parser.error("--depth applies to the default network only; give --network or --depth, not both")
    if importlib.util.find_spec("matplotlib") is None:
        print(f"{prog}: error: the figures need matplotlib; install it with: pip install 'tangents[plot]'", file=sys.stderr)
        return 1
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {str(args.out)!r} exists and is not a directory")
    try:
        network = load_network(args.network) if args.network else None
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1

    import torch

    from .. import evidence

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device!r} was asked for but CUDA is not available here; use --device cpu")
    if network is None and args.depth is not None:
        depth = args.depth
        network = lambda width: evidence.default_network(width, depth)  # noqa: E731
    try:
        report = evidence.run(
            network=network,
            out=args.out,
            widths=args.widths,
            circle_widths=args.circle_widths,
            seeds=range(args.seed, args.seed + args.networks),
            data_seed=args.seed,
            n_train=args.n_train,
            steps=args.steps,
            lr=args.lr,
            dtype=args.dtype,
            device=args.device,
            progress=False if args.quiet else None,
            dpi=args.dpi,
            threads=args.threads or None,
        )
    except (evidence.EvidenceError, MemoryError, ValueError, TypeError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    print(_summary(report, args.out))
    return 0


def _summary(report: Any, out: Path) -> str:
    """A few lines for the terminal: where the files are and the headline numbers."""
    import numpy as np

    widest = report.widths[-1]
    rows = [
        f"tangents evidence: {len(report.widths)} widths x {len(report.seeds)} networks, {report.steps} steps "
        f"(seeds {report.seeds[0]}..{report.seeds[-1]}, data seed {report.data_seed}) in {report.timings['total']:.0f} s",
        f"  NTK error vs width: slope {report.ntk_error_fit.slope:.3f} +- {report.ntk_error_fit.slope_se:.3f} (theory -0.5)",
        f"  NTK change during training: slope {report.ntk_change_fit.slope:.3f}; parameter change: slope "
        f"{report.weight_change_fit.slope:.3f}",
        # The geometric mean over the seeds, as in report.md's tables.
        f"  width {widest}: RMSE network - NTK prediction {math.exp(float(np.log(report.rmse_net_ntk[-1]).mean())):.3g} "
        f"(targets' RMS {report.target_rms:.3g})",
        f"  steps to decay by e along the top / bottom eigenvector: {report.efold_steps[0]:g} / {report.efold_steps[-1]:g}",
        f"  wrote 5 figures and report.md to {out}",
    ]
    return "\n".join(rows)
