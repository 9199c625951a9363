r"""Monte Carlo convergence of torch-initialised models to their lift (``tangents.from_torch``).

The heavier companion of ``tests/test_lift_monte_carlo.py`` (which runs an MLP in CI): for a
CNN with global average pooling, a pre-activation ResNet without BatchNorm and a transformer
encoder block (tied queries/keys, logits c/head_dim), at growing widths n, S models are
initialised by torch (one seed each) and their empirical NNGP ``f fᵀ / outputs`` (n/4
outputs) and NTK (``tangents.empirical_ntk_fn``, first two outputs) are compared with the
lifted kernels in the standard parameterization. Per width it prints

* ``err/se``: ‖mean − lifted‖ over the standard error of the mean (≈ 1 for pure noise);
* ``rms``: the RMS relative deviation of one model's kernel from the lifted one,
  √mean_s ‖K_s − K‖² / ‖K‖, which shrinks like n^−½;

and the slope of log rms against log n. Results go to ``benchmarks/results/lift_monte_carlo.json``
with the git revision measured. Accuracy numbers only (no timings): valid on a shared machine.

    .venv/bin/python benchmarks/lift_monte_carlo.py                 # about 10 minutes (one thread)
    .venv/bin/python benchmarks/lift_monte_carlo.py --small         # a 2-minute check of the script
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import code_state, markdown_table  # noqa: E402

import tangents  # noqa: E402
from tangents.lift import from_torch  # noqa: E402


class Cnn(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out = nn.Linear(width, max(width // 4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class ResNet(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Linear(width, max(width // 4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.conv2(F.relu(self.conv1(F.relu(x))))
        return self.out(F.relu(x).mean((2, 3)))


class Transformer(nn.Module):
    def __init__(self, width: int, heads: int = 2, c: float = 2.0) -> None:
        super().__init__()
        self.heads, self.c = heads, c
        self.embed = nn.Linear(16, width)
        self.qk = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.o = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.ff = nn.Linear(width, width)
        self.out = nn.Linear(width, max(width // 4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        n, length, e = x.shape
        d = e // self.heads
        q = self.qk(x).view(n, length, self.heads, d).transpose(1, 2)
        v = self.v(x).view(n, length, self.heads, d).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, q, v, scale=self.c / d).transpose(1, 2).reshape(n, length, e)
        x = self.norm(x + self.o(a))
        return self.out(F.relu(self.ff(x)).mean(1))


FAMILIES = {"cnn": (Cnn, (3, 4, 4)), "resnet": (ResNet, (3, 4, 4)), "transformer": (Transformer, (4, 16))}


def measure(family, input_shape, widths, nngp_seeds: int, ntk_seeds: int) -> list[dict]:  # noqa: ANN001
    x = torch.randn(6, *input_shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    rows = []
    for width in widths:
        torch.manual_seed(10_000 + width)
        template = family(width)
        lifted = from_torch(template, x[:2])
        exact = {"nngp": lifted.kernel_fn(x, None, "nngp"), "ntk": lifted.kernel_fn(x, None, "ntk")}
        ntk_fn = tangents.empirical_ntk_fn(lambda p, i: functional_call(template, p, (i,))[:, :2], vmap_axes=0)
        samples: dict[str, list[torch.Tensor]] = {"nngp": [], "ntk": []}
        for seed in range(max(nngp_seeds, ntk_seeds)):
            torch.manual_seed(seed)
            model = family(width)
            if seed < nngp_seeds:
                with torch.no_grad():
                    f = model(x)
                samples["nngp"].append(f @ f.T / f.shape[1])
            if seed < ntk_seeds:
                samples["ntk"].append(ntk_fn(x, None, {k: v.detach() for k, v in model.named_parameters()}))
        row: dict = {"width": width}
        for name, k in exact.items():
            stacked = torch.stack(samples[name])
            scale = k.norm()
            error = float((stacked.mean(0) - k).norm() / scale)
            se = float(stacked.std(0).norm() / math.sqrt(len(stacked)) / scale)
            rms = float(((stacked - k) ** 2).sum((1, 2)).mean().sqrt() / scale)
            row[name] = {"error": error, "se": se, "rms": rms, "samples": len(stacked)}
        rows.append(row)
        print(f"  width {width}: NNGP err/se {row['nngp']['error'] / row['nngp']['se']:.2f} rms {row['nngp']['rms']:.4f}"
              f" | NTK err/se {row['ntk']['error'] / row['ntk']['se']:.2f} rms {row['ntk']['rms']:.4f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small widths and few seeds (checks the script)")
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # tiny models: the thread pool costs more than it saves
    widths = (8, 32) if args.small else (16, 64, 256)
    nngp_seeds, ntk_seeds = (40, 4) if args.small else (400, 40)
    results = {"code": code_state(), "widths": widths, "nngp_seeds": nngp_seeds, "ntk_seeds": ntk_seeds, "families": {}}
    table = []
    for name in args.families.split(","):
        family, shape = FAMILIES[name]
        print(f"{name}:", flush=True)
        rows = measure(family, shape, widths, nngp_seeds, ntk_seeds)
        slopes = {k: float(np.polyfit(np.log(widths), np.log([r[k]["rms"] for r in rows]), 1)[0]) for k in ("nngp", "ntk")}
        results["families"][name] = {"rows": rows, "rms_slopes": slopes}
        for r in rows:
            table.append([name, r["width"], f"{r['nngp']['error'] / r['nngp']['se']:.2f}", f"{r['nngp']['rms']:.4f}",
                          f"{r['ntk']['error'] / r['ntk']['se']:.2f}", f"{r['ntk']['rms']:.4f}"])
        table.append([name, "slope", "", f"{slopes['nngp']:.2f}", "", f"{slopes['ntk']:.2f}"])
    print(markdown_table(["model", "width", "NNGP err/se", "NNGP rms", "NTK err/se", "NTK rms"], table))
    out = HERE / "results" / ("lift_monte_carlo_small.json" if args.small else "lift_monte_carlo.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
