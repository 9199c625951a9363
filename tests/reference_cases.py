"""Loads neural-tangents 0.6.5 reference cases (``tests/reference``) and rebuilds their networks.

The manifest spells each architecture in neural-tangents' names and arguments, so
``getattr(tangents.stax, spec["type"])(**args)`` builds the same layer; keys that describe
rather than configure (``note``, ``fn_definition``, ...) are dropped here.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import torch

from tangents import stax

REFERENCE_DIR = pathlib.Path(__file__).parent / "reference"
MANIFEST = json.loads((REFERENCE_DIR / "manifest.json").read_text())
CASES = {case["id"]: case for case in MANIFEST["cases"]}

_DESCRIPTIVE_KEYS = {"type", "note", "equivalent", "fn_definition", "df", "to_dense", "precision"}

ELEMENTWISE_FNS = {
    "tanh": torch.tanh,
    "softplus": torch.nn.functional.softplus,
    "swish": lambda x: x * torch.sigmoid(x),
}


def build(spec: dict[str, Any]) -> stax.Layer:
    """Builds the `tangents.stax` layer a manifest ``arch`` entry describes."""
    kind = spec["type"]
    if kind in ("serial", "parallel"):
        return getattr(stax, kind)(*(build(s) for s in spec["layers"]))
    if kind == "repeat":
        return stax.repeat(build(spec["layer"]), spec["n"])
    args = {k: v for k, v in spec.items() if k not in _DESCRIPTIVE_KEYS}
    if kind == "ElementwiseNumerical":
        args["fn"] = ELEMENTWISE_FNS[args["fn"]]
    for key in ("s", "filter_shape", "strides", "window_shape", "shape"):
        if isinstance(args.get(key), list):
            args[key] = tuple(args[key])
    if kind in ("Conv", "ConvTranspose", "ConvLocal") and args.get("dimension_numbers") is None:
        # NT's dimension_numbers=None is channels-last; tangents' None is channels-first.
        spatial = "HWD"[: len(args["filter_shape"])]
        args["dimension_numbers"] = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    return getattr(stax, kind)(**args)


def load(case_id: str) -> dict[str, np.ndarray]:
    """The stored arrays of a case, by name."""
    with np.load(REFERENCE_DIR / CASES[case_id]["file"]) as data:
        return {k: data[k] for k in data.files}


def relative_error(ours: Any, ref: np.ndarray, finite_only: bool = False) -> float:
    """max |ours − ref| / max |ref| (over the entries where ``ref`` is finite if asked)."""
    ours = np.asarray(ours.detach().cpu() if isinstance(ours, torch.Tensor) else ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    mask = np.isfinite(ref) if finite_only else np.ones(ref.shape, dtype=bool)
    scale = np.abs(ref[mask]).max()
    return float(np.abs(ours[mask] - ref[mask]).max() / scale)


def assert_kernels_match(
    kernel_fn: Any, x1: torch.Tensor, x2: torch.Tensor | None, nngp: np.ndarray, ntk: np.ndarray, tol: float, **kwargs: Any
) -> None:
    """``kernel_fn(x1, x2, ("nngp", "ntk"), **kwargs)`` equals the references to ``tol``."""
    ours = kernel_fn(x1, x2, ("nngp", "ntk"), **kwargs)
    assert relative_error(ours.nngp, nngp) <= tol
    assert relative_error(ours.ntk, ntk) <= tol


def assert_final_kernels_match(
    kernel_fn: Any, x1: torch.Tensor, x2: torch.Tensor, ref: dict[str, np.ndarray], tol: float
) -> None:
    """The stored ``nngp``/``ntk`` (x2 given) and ``nngp_self``/``ntk_self`` (x2=None)."""
    assert_kernels_match(kernel_fn, x1, x2, ref["nngp"], ref["ntk"], tol)
    assert_kernels_match(kernel_fn, x1, None, ref["nngp_self"], ref["ntk_self"], tol)


def case_ids(prefixes: tuple[str, ...], kind: str = "kernel") -> list[str]:
    """Ids of the cases of ``kind`` whose id starts with one of ``prefixes``.

    Every such case must be shipped: a missing file fails here, by name, instead of silently
    dropping the case (the exact count of each family is checked in
    ``test_reference_inventory.py``).
    """
    ids = [cid for cid, case in CASES.items() if case["kind"] == kind and cid.startswith(prefixes)]
    missing = [cid for cid in ids if not (REFERENCE_DIR / CASES[cid]["file"]).exists()]
    assert not missing, f"reference cases listed in manifest.json but not shipped: {missing}"
    return ids
