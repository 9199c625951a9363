"""Why NTK_VECTOR_PRODUCTS can differ from the other implementations in float32: a ReLU at its kink.

The benchmark's ResNet-18 (``models.resnet18()``, seeded) at N = 16 (inputs
``torch.randn(16, 3, 32, 32)`` from seed 1), ``trace_axes=()``, ``vmap_axes=0``: in float32,
NTK_VECTOR_PRODUCTS is ~5e-3 (of the largest entry) away from the float64 kernel, JC and SD
~3e-7. This script shows the cause and measures it:

1. the float32 kernels of the three implementations against the float64 one, and which
   example pairs are off by more than 1e-5;
2. the ReLU input closest to zero (relative to its layer's spread) for every example, in
   float64: the suspect unit;
3. that unit's float32 pre-activation when its example is evaluated in batches of different
   sizes (1, 2, 5, 16; with and without oneDNN): float32 rounding (~1e-6 here, after a dozen
   layers) puts it on either side of zero;
4. the float64 kernel with that one unit's ReLU derivative set to the other side: the size
   of its share of the kernel.

NTK_VECTOR_PRODUCTS differentiates each example twice, its reverse-mode rows ``J2ᵀ e`` on
the examples of a chunk and its forward-mode products on a batch of examples ``0:b``; a unit
whose sign differs between those two evaluations makes that example's rows use one
activation pattern and its columns the other. JACOBIAN_CONTRACTION and
STRUCTURED_DERIVATIVES build both factors from one forward evaluation, so their kernel is the
Gram matrix of one (float32-rounded) Jacobian. Accuracy, not timing: the numbers do not
depend on the machine's load. Run (~2 min on 2 cores)::

    .venv/bin/python benchmarks/empirical_kink.py

Results go to ``benchmarks/results/empirical_kink.json`` with the git revision measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import code_state  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16, help="examples")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    import models
    from tangents.empirical import empirical_ntk_fn

    torch.set_num_threads(args.threads)
    m32 = models.resnet18()
    m64 = copy.deepcopy(m32).double()
    x = torch.randn(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    # Every ReLU of the ResNet goes through torch.relu (nn.ReLU calls it too): count the calls
    # of one forward pass, record or change the inputs of one of them.
    relu = torch.relu
    state: dict[str, Any] = {"call": 0, "record": None, "flip": None}

    def counting_relu(t: torch.Tensor) -> torch.Tensor:
        call = state["call"]
        state["call"] += 1
        if state["record"] is not None:
            state["record"].append(t.detach().clone())
        flip = state["flip"]
        if flip is not None and call == flip[0]:  # that one value's derivative set to 0
            return torch.where((t - flip[1]).abs() < 1e-12, torch.zeros_like(t), relu(t))
        return relu(t)

    class Counted(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            state["call"] = 0
            return self.model(inputs)

    torch.relu = counting_relu
    try:
        def ntk(model: torch.nn.Module, implementation: int, inputs: torch.Tensor) -> torch.Tensor:
            fn = empirical_ntk_fn(Counted(model), trace_axes=(), vmap_axes=0, implementation=implementation)
            return fn(inputs, None).double()

        def pre_activations(model: torch.nn.Module, inputs: torch.Tensor) -> list[torch.Tensor]:
            state["record"], state["call"] = [], 0
            with torch.no_grad():
                model(inputs)
            out, state["record"] = state["record"], None
            return out

        reference = ntk(m64, 3, x.double())
        scale = reference.abs().max()
        result: dict[str, Any] = {"n": args.n, "code": code_state(), "float32_vs_float64": {}, "off_pairs": {}}
        for impl, name in ((1, "JACOBIAN_CONTRACTION"), (2, "NTK_VECTOR_PRODUCTS"), (3, "STRUCTURED_DERIVATIVES")):
            d = (ntk(m32, impl, x) - reference).abs() / scale
            result["float32_vs_float64"][name] = float(d.max())
            result["off_pairs"][name] = (d.amax(dim=(2, 3)) > 1e-5).nonzero().tolist()
            print(f"{name}: float32 vs float64 {float(d.max()):.2e}; pairs off by > 1e-5: {result['off_pairs'][name]}")

        z64 = pre_activations(m64, x.double())
        closest = []  # (relative distance, example, call, unit, value)
        for call, z in enumerate(z64):
            flat = z.flatten(1)
            rel = flat.abs() / flat.std(dim=1, keepdim=True)
            value, unit = rel.min(dim=1)
            closest += [(float(value[e]), e, call, int(unit[e]), float(flat[e, unit[e]])) for e in range(args.n)]
        closest.sort()
        result["closest_to_kink"] = [dict(zip(("relative", "example", "call", "unit", "value"), c)) for c in closest[:5]]
        off = {e for pair in result["off_pairs"]["NTK_VECTOR_PRODUCTS"] for e in pair}
        suspects = [c for c in closest if c[1] in off] or closest
        rel, example, call, unit, value = suspects[0]
        print(f"closest ReLU input to 0 among the examples off: example {example}, call {call}, unit {unit}: "
              f"{value:.3e} ({rel:.1e} of its layer's spread)")

        signs = {}
        for onednn in (True, False):
            torch.backends.mkldnn.enabled = onednn
            for size in (1, 2, 5, 16):
                lo = max(0, min(example - size + 1, args.n - size))
                z32 = pre_activations(m32, x[lo : lo + size])[call]
                signs[f"batch {size}, oneDNN {'on' if onednn else 'off'}"] = float(z32[example - lo].flatten()[unit])
        torch.backends.mkldnn.enabled = True
        result["float32_pre_activation"] = signs
        for k, v in signs.items():
            print(f"  float32, {k}: {v:+.3e}")

        state["flip"] = (call, value)
        flipped = ntk(m64, 2, x.double())
        state["flip"] = None
        share = float((flipped - reference).abs().max() / scale)
        result["unit"] = {"example": example, "call": call, "unit": unit, "float64_value": value, "share_of_kernel": share}
        print(f"float64 kernel with that unit's derivative on the other side: {share:.2e} of the largest entry away")
    finally:
        torch.relu = relu
    out = HERE / "results" / "empirical_kink.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
