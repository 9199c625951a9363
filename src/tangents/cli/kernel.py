"""``tangents kernel``: compute a kernel into a store on disk, resumably, here or on a Dask cluster.

::

    tangents kernel --arch myrtle5 --x1 train.npy --out train.zarr --block 500 --workers 2
    tangents kernel --arch net.json --x1 test.npz:x --x2 train.npy --out test_train.zarr
    tangents kernel --status train.zarr

``--arch`` is a JSON file describing a stax network (the form of the ``arch`` entries of
neural-tangents manifests, `tangents.stax.from_spec`) or a preset (`tangents.stax.PRESETS`).
The store is `tangents.store.compute_kernel`'s: rerunning the same command resumes it (only
the blocks not done are computed); a different command on the same store is refused with
what differs. Ctrl-C (or SIGTERM, as batch schedulers send before pre-empting a job) stops
after the block being written and leaves a resumable store (exit status 130 for Ctrl-C, 143 for
SIGTERM, the shells' 128 + signal number).

Arguments are parsed before torch is imported, so ``--help`` and argument errors answer at
once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._arguments import device as _device
from ._arguments import non_negative_int as _non_negative_int
from ._arguments import positive_int as _positive_int

__all__ = ["build_parser", "main"]

_PRESETS = ("fc", "cnn", "myrtle5", "myrtle7", "myrtle10", "resnet")  # tangents.stax.PRESETS
_NAMES = ("nngp", "ntk")


class _Failure(Exception):
    """The command cannot go on; the message says why and what to do."""


def _get(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in _NAMES]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected nngp, ntk or nngp,ntk, got {text!r}")
    return names


def build_parser(prog: str = "tangents kernel") -> argparse.ArgumentParser:
    """The argument parser of ``tangents kernel``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Compute the NNGP and/or NTK of a stax network block by block into a zarr store on disk, "
            "in this process or on a Dask cluster. Rerun the same command to resume an interrupted "
            "store; --status says what a store holds."
        ),
        epilog=(
            "Presets: fc (inputs (N, features)); cnn, myrtle5, myrtle7, myrtle10, resnet (images (N, C, H, W), "
            "channels first). Example:\n"
            "  tangents kernel --arch myrtle5 --x1 x_train.npy --out k_train.zarr --block 500 --workers 2\n"
            "Exit status: 0 done, 1 failed (the message says why), 2 bad arguments, 130/143 interrupted by Ctrl-C/SIGTERM (resumable)."
        ),
    )
    what = parser.add_argument_group("what to compute")
    what.add_argument("--arch", metavar="ARCH", help="a JSON file describing a stax network, or a preset: " + ", ".join(_PRESETS))
    what.add_argument("--nt-layout", action="store_true",
                      help="read a convolution's \"dimension_numbers\": null as neural-tangents does (channels-last NHWC inputs)")
    what.add_argument("--x1", metavar="FILE", help="inputs (N1, ...): a .npy file, or a .npz file (its only array, or FILE.npz:NAME)")
    what.add_argument("--x2", metavar="FILE", help="second inputs (N2, ...); default x2 = x1 (symmetric: only blocks on and above the diagonal are computed)")
    what.add_argument("--get", type=_get, default=_NAMES, metavar="NAMES", help="kernels to store: nngp, ntk or nngp,ntk (default: nngp,ntk)")
    what.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision of the kernels (default: %(default)s)")
    how = parser.add_argument_group("how")
    how.add_argument("--out", metavar="STORE", help="the store (a directory, created if needed)")
    how.add_argument("--block", type=_positive_int, default=None, metavar="B",
                     help="examples per block side (default: the store's when resuming; else about two minutes of work and at most 128 MiB of results per block)")
    where = how.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="run the blocks on the Dask cluster whose scheduler is at ADDRESS (e.g. tcp://10.0.0.1:8786)")
    where.add_argument("--workers", type=_positive_int, metavar="K", help="run the blocks on a local Dask cluster of K worker processes")
    how.add_argument("--device", type=_device, default="cpu", help="torch device of this process's blocks, e.g. cpu, cuda:0 (default: %(default)s)")
    how.add_argument("--threads", type=_non_negative_int, default=0, help="torch threads in this process; 0 keeps torch's default (default: %(default)s)")
    how.add_argument("--overwrite", action="store_true", help="replace an existing store at --out instead of resuming it")
    how.add_argument("--no-verify", action="store_true", help="on resume, check the sizes of the blocks done but not their checksums")
    how.add_argument("--no-fsync", action="store_true", help="do not flush each block to disk before counting it done (faster; still safe if the process is killed, not if the machine loses power)")
    status = parser.add_argument_group("inspect")
    status.add_argument("--status", metavar="STORE", help="say what STORE is a kernel of and which blocks are done (exit status 1 if some are missing)")
    status.add_argument("--verify", action="store_true", help="with --status: also read every block and check its checksums")
    status.add_argument("--json", action="store_true", help="print the result as JSON")
    status.add_argument("--quiet", "-q", action="store_true", help="no progress bar or messages on stderr")
    return parser


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.status is not None:
        extra = [f"--{k.replace('_', '-')}" for k in ("arch", "x1", "x2", "out", "block", "scheduler", "workers")
                 if getattr(args, k) is not None]
        if extra:
            parser.error(f"--status only reads a store; drop {', '.join(extra)}")
        return
    if args.verify:
        parser.error("--verify goes with --status STORE (a computation always checks the blocks it resumes unless --no-verify)")
    missing = [name for name in ("arch", "x1", "out") if getattr(args, name) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join('--' + m for m in missing)} (or --status STORE)")
    arch_file = Path(args.arch)
    if args.arch not in _PRESETS and not arch_file.is_file():
        parser.error(f"--arch {args.arch!r} is neither a JSON file nor a preset ({', '.join(_PRESETS)})")
    for option in ("x1", "x2"):
        value = getattr(args, option)
        if value is not None and not Path(value).is_file() and not Path(value.rpartition(":")[0]).is_file():
            parser.error(f"--{option} {value!r}: no such file")


def main(argv: Sequence[str] | None = None, prog: str = "tangents kernel") -> int:
    """Runs ``tangents kernel``.

    Returns:
        0 when done (or, with ``--status``, when the store is complete), 1 on failure (or an
        incomplete store), 2 for bad arguments, 130 when interrupted by Ctrl-C, 143 by SIGTERM (the store is resumable).
    """
    parser = build_parser(prog)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    _check_arguments(parser, args)
    try:
        if args.status is not None:
            return _status(args)
        return _compute(args)
    except _Failure as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------- --status


def _status(args: argparse.Namespace) -> int:
    from ..store import KernelStore

    try:
        store = KernelStore.open(args.status)
    except ValueError as e:
        raise _Failure(str(e)) from None
    missing = store.missing_blocks()
    damaged = store.verify() if args.verify else {}
    if args.json:
        print(json.dumps({
            "path": str(store.path), "complete": not missing and not damaged, "blocks": len(store.plan),
            "missing": [list(b.index) for b in missing], "damaged": {f"{b.index[0]},{b.index[1]}": r for b, r in damaged.items()},
            "shape": list(store.shape), "dtype": str(store.dtype), "get": list(store.get), "block_size": store.block_size,
            "fingerprint": store.fingerprint,
        }))
    else:
        print(store.describe())
        if args.verify:
            if damaged:
                for block, reason in damaged.items():
                    print(f"damaged    block {block.index}: {reason}")
                print("           rerun the command that made the store to recompute them")
            else:
                print("verified   every block done matches its checksums")
    return 0 if not missing and not damaged else 1


# ---------------------------------------------------------------------- computing


def _load(spec: str, option: str, dtype: Any) -> Any:
    """Inputs from ``FILE.npy``, ``FILE.npz`` (its only array) or ``FILE.npz:NAME``, as a tensor."""
    import numpy as np
    import torch

    path, key = Path(spec), None
    if not path.is_file():
        head, _, key = spec.rpartition(":")
        path = Path(head)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise _Failure(f"--{option} {spec}: cannot be read as .npy or .npz ({e})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            names = list(data.files)
            if key is None and len(names) != 1:
                raise _Failure(f"--{option} {spec}: the archive holds {', '.join(names)}; name one as {path}:NAME")
            key = names[0] if key is None else key
            if key not in names:
                raise _Failure(f"--{option} {spec}: no array {key!r} in the archive (it holds {', '.join(names)})")
            array = data[key]
    elif key is not None:
        raise _Failure(f"--{option} {spec}: ':NAME' selects an array of a .npz archive, but {path} is a .npy file")
    else:
        array = data
    if array.dtype.kind not in "fiu" or array.ndim < 2:
        raise _Failure(
            f"--{option} {spec}: expected a numeric array (N, ...) with a batch axis and a feature axis, got "
            f"dtype {array.dtype} and shape {array.shape}"
        )
    return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype)


def _network(args: argparse.Namespace, example_shape: tuple[int, ...]) -> Any:
    from .. import stax

    if args.arch in _PRESETS:
        try:
            return stax.preset(args.arch, example_shape)
        except ValueError as e:
            raise _Failure(str(e)) from None
    try:
        spec = json.loads(Path(args.arch).read_text())
    except (OSError, ValueError) as e:
        raise _Failure(f"--arch {args.arch}: cannot be read as JSON ({e})") from None
    try:
        return stax.from_spec(spec, nt_layout=args.nt_layout)
    except (ValueError, TypeError) as e:
        raise _Failure(f"--arch {args.arch}: {e}") from None


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Interrupted()


def _compute(args: argparse.Namespace) -> int:
    import torch

    from ..store import StoreBusyError, StoreMismatchError, compute_kernel

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _Failure(f"--device {args.device} was asked for but CUDA is not available here; use --device cpu")
    dtype = getattr(torch, args.dtype)
    x1 = _load(args.x1, "x1", dtype).to(device)
    x2 = None if args.x2 is None else _load(args.x2, "x2", dtype).to(device)
    if x2 is not None and tuple(x2.shape[1:]) != tuple(x1.shape[1:]):
        raise _Failure(f"--x1 has examples of shape {tuple(x1.shape[1:])} but --x2 of {tuple(x2.shape[1:])}; they must match")
    net = _network(args, tuple(x1.shape[1:]))
    log = (lambda text: None) if args.quiet else (lambda text: print(f"[tangents kernel] {text}", file=sys.stderr, flush=True))
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.perf_counter()
    try:
        with _client(args, log) as client:
            log(f"{'resuming' if (Path(args.out) / 'zarr.json').exists() and not args.overwrite else 'computing'} "
                f"{','.join(args.get)} of {tuple(x1.shape)}" + ("" if x2 is None else f" x {tuple(x2.shape)}")
                + f" into {args.out}")
            store = compute_kernel(
                net, x1, x2, args.get, path=args.out, block_size=args.block, client=client,
                progress=False if args.quiet else True, overwrite=args.overwrite, verify=not args.no_verify,
                durable=not args.no_fsync,
            )
    except KeyboardInterrupt as interrupt:
        _report_interrupt(args.out)
        return 143 if isinstance(interrupt, _Interrupted) else 130  # 128 + the signal's number
    except (ValueError, TypeError, MemoryError, OSError, ImportError, StoreBusyError, StoreMismatchError) as e:
        raise _Failure(str(e)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    run = store.last_run or {}
    summary = {
        "path": str(store.path), "complete": store.complete, "shape": list(store.shape), "dtype": str(store.dtype),
        "get": list(store.get), "block_size": store.block_size, "blocks": run.get("blocks"),
        "computed": run.get("computed"), "skipped": run.get("skipped"), "damaged": run.get("damaged"),
        "seconds": round(time.perf_counter() - started, 3), "pairs_per_second": run.get("pairs_per_second"),
    }
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        print(
            f"{store.path}: {summary['blocks']} blocks of {store.block_size} x {store.block_size} done "
            f"({summary['computed']} computed now, {summary['skipped']} skipped on resume, {summary['damaged']} damaged "
            f"and recomputed) in {summary['seconds']:.1f} s; kernels {', '.join(store.get)} of shape {store.shape}, {store.dtype}"
        )
    return 0


def _report_interrupt(out: str) -> None:
    from ..store import KernelStore

    try:
        store = KernelStore.open(out)
        missing = len(store.missing_blocks())
        total = len(store.plan)
        done = f"{total - missing} of {total} blocks are done"
    except (ValueError, OSError):
        done = "the store was not created yet"
    print(f"\ninterrupted: {done}; rerun the same command to resume", file=sys.stderr, flush=True)


def _client(args: argparse.Namespace, log: Any) -> Any:
    """The Dask client to run on (a context manager), or ``None`` for this process."""
    if args.workers is not None:
        from ..distributed import local_client

        log(f"starting a local Dask cluster of {args.workers} worker processes")
        return local_client(args.workers)
    if args.scheduler is not None:
        from ..distributed import connect

        try:
            client = connect(args.scheduler)
        except OSError as e:
            raise _Failure(str(e)) from None
        log(f"connected to the Dask scheduler at {args.scheduler}")
        return contextlib.closing(client)
    return contextlib.nullcontext(None)
