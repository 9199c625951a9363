"""Agreement of the three empirical NTK implementations on the real-sized models of
``models.py`` (ResNet-18, 3x32x32, 10 outputs; the 4-layer transformer encoder, d_model 256,
sequence 64), ``trace_axes=()``, ``vmap_axes=0``: in float64 against each other, and in
float32 against the float64 kernel (same weights, cast), as max |K - K64| / max |K64|.

An accuracy script, not a timing: its numbers do not depend on the machine's load. Run::

    .venv/bin/python benchmarks/empirical_agreement.py            # N = 8: ~5 min on 2 cores
    .venv/bin/python benchmarks/empirical_agreement.py --n 2 --small  # seconds: validates it

Results go to ``benchmarks/results/empirical_agreement.json`` (``_small`` for ``--small``),
with the git revision measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import code_state  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="examples")
    parser.add_argument("--small", action="store_true", help="small models (ResNet width 8, 1-layer transformer)")
    parser.add_argument("--models", nargs="*", default=["resnet18", "transformer"])
    args = parser.parse_args()

    import torch

    import models
    import tangents
    from empirical import MODELS, SMALL_MODELS

    cases = SMALL_MODELS if args.small else MODELS
    record = {"code": code_state(), "n": args.n, "small": args.small, "rows": []}
    for name in args.models:
        case = cases[name]
        model64 = getattr(models, case["model"])(**case["kwargs"]).double()
        x64 = torch.randn(args.n, *case["shape"], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        kernels = {}
        for dtype in (torch.float64, torch.float32):
            model = model64.to(dtype)
            for impl in (1, 2, 3):
                k = tangents.empirical_ntk_fn(model, (), vmap_axes=0, implementation=impl, progress=False)(x64.to(dtype))
                kernels[(str(dtype).split(".")[1], impl)] = k.detach().double()
            model64 = model.double()
        ref = kernels[("float64", 3)]
        scale = float(ref.abs().max())
        for (dtype, impl), k in kernels.items():
            row = {"model": name, "dtype": dtype, "implementation": tangents.NtkImplementation(impl).name,
                   "max_rel_diff_vs_float64_structured": float((k - ref).abs().max()) / scale}
            record["rows"].append(row)
            print(json.dumps(row), flush=True)
        for impl in (1, 2):
            a, b = kernels[("float32", impl)], kernels[("float32", 3)]
            print(json.dumps({"model": name, "float32": f"{tangents.NtkImplementation(impl).name} vs STRUCTURED",
                              "max_rel_diff": float((a - b).abs().max()) / scale}), flush=True)
    out = HERE / "results" / f"empirical_agreement{'_small' if args.small else ''}.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
