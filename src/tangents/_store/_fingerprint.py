"""What a kernel store is a kernel of: the fingerprint, its digest, and what differs.

The fingerprint is JSON data::

    {"tangents": "0.1.0",                       # the version that computed it
     "architecture": {...},                     # Layer.spec(): every layer and argument
     "kernel_fn_kwargs": {...},                 # kernel_fn's keyword arguments
     "inputs": {"x1": {"shape": [...], "dtype": "float32", "sha256": "..."}, "x2": null},
     "dtype": "float32", "get": ["nngp", "ntk"], "block_size": 4096}

Its digest (SHA-256 of the canonical JSON) is written into every block's manifest entry, so
a block from another computation is never taken for one of this store's.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..stax import Layer
from ..stax._spec import describe_function, layer_spec

__all__ = ["describe_inputs", "differences", "digest", "fingerprint", "layer_of"]

#: Bytes hashed at a time (rows of the inputs), so hashing never copies a whole input.
_HASH_CHUNK = 64 * 2**20


def layer_of(kernel_fn: Any) -> tuple[Layer | None, dict[str, Any]]:
    """The stax layer behind a kernel function, and keyword arguments bound to it.

    Follows ``functools.partial`` (keyword arguments only) and ``functools.wraps`` wrappers
    (such as `tangents.batch`'s) down to a `Layer` or a layer's bound ``kernel_fn``.
    ``(None, {})`` when there is none (an empirical or hand-written kernel function).
    """
    bound: dict[str, Any] = {}
    for _ in range(100):  # a chain of wrappers; the bound avoids a cycle of __wrapped__
        if isinstance(kernel_fn, Layer):
            return kernel_fn, bound
        if isinstance(kernel_fn, functools.partial):
            if kernel_fn.args:
                return None, {}
            bound = {**kernel_fn.keywords, **bound}
            kernel_fn = kernel_fn.func
            continue
        owner = getattr(kernel_fn, "__self__", None)
        if isinstance(owner, Layer) and getattr(kernel_fn, "__name__", None) == "kernel_fn":
            return owner, bound
        kernel_fn = getattr(kernel_fn, "__wrapped__", None)
        if kernel_fn is None:
            return None, {}
    return None, {}


def _hash_tensor(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (C order), read in chunks of rows."""
    digest = hashlib.sha256()
    t = t.detach()
    if t.ndim == 0:
        t = t.reshape(1)
    rows_per_chunk = max(1, _HASH_CHUNK // max(1, t[0].numel() * t.element_size()))
    for start in range(0, t.shape[0], rows_per_chunk):
        chunk = t[start : start + rows_per_chunk].to("cpu").contiguous().numpy()
        digest.update(memoryview(chunk).cast("B"))
    return digest.hexdigest()


def describe_inputs(x: Any) -> Any:
    """``{"shape", "dtype", "sha256"}`` of a tensor (a list of them for a list of inputs)."""
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return [describe_inputs(xi) for xi in x]
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", ""), "sha256": _hash_tensor(x)}


def _describe_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return describe_inputs(value)
    if isinstance(value, (list, tuple)):
        return [_describe_value(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe_value(v, f"{where}[{k!r}]") for k, v in sorted(value.items())}
    if isinstance(value, torch.dtype):
        return str(value)
    if callable(value):
        return describe_function(value)
    raise TypeError(
        f"compute_kernel: cannot fingerprint the keyword argument {where} (a {type(value).__name__}); pass "
        f"numbers, strings, tensors or tuples of them."
    )


def fingerprint(
    architecture: Any,
    kernel_fn_kwargs: dict[str, Any],
    x1: Any,
    x2: Any,
    dtype: torch.dtype,
    get: Sequence[str],
    block_size: int,
) -> dict[str, Any]:
    """The fingerprint of a computation (see the module doc).

    Args:
        architecture: a `Layer` (fingerprinted by its spec) or any JSON data describing the
            kernel function.
        kernel_fn_kwargs: ``kernel_fn``'s keyword arguments.
        x1: inputs ``(N1, ...)`` (or a list of them).
        x2: inputs ``(N2, ...)`` or ``None``.
        dtype: the kernel's dtype.
        get: the kernels stored.
        block_size: examples per block side.
    """
    if isinstance(architecture, Layer):
        architecture = layer_spec(architecture, describe_functions=True)
    else:
        try:
            architecture = json.loads(json.dumps(architecture))
        except (TypeError, ValueError):
            raise TypeError(
                f"compute_kernel: architecture must be JSON data (a dict, list, string or number) that "
                f"describes the kernel function, got a {type(architecture).__name__}."
            ) from None
    return {
        "tangents": __version__,
        "architecture": architecture,
        "kernel_fn_kwargs": _describe_value(kernel_fn_kwargs, "kernel_fn_kwargs"),
        "inputs": {"x1": describe_inputs(x1), "x2": describe_inputs(x2)},
        "dtype": str(dtype).replace("torch.", ""),
        "get": list(get),
        "block_size": int(block_size),
    }


def digest(fingerprint: dict[str, Any]) -> str:
    """SHA-256 of the fingerprint's canonical JSON."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_TOPICS: dict[str, str] = {
    "inputs": "inputs",
    "architecture": "architecture",
    "kernel_fn_kwargs": "kernel_fn keyword arguments",
    "dtype": "dtype",
    "get": "get",
    "block_size": "block_size",
    "tangents": "tangents version",
}


def differences(stored: dict[str, Any], now: dict[str, Any], limit: int = 3) -> list[str]:
    """What differs between two fingerprints, one line per difference, e.g.
    ``"architecture: layers[0].W_std is 1.5 in the store, 2.0 now"``."""
    lines: list[str] = []
    for key, topic in _TOPICS.items():
        a, b = stored.get(key), now.get(key)
        if a == b:
            continue
        if key == "inputs":
            for which in ("x1", "x2"):
                if a.get(which) != b.get(which):
                    lines.append(f"inputs: {which} is {_input_text(a.get(which))} in the store, {_input_text(b.get(which))} now")
            continue
        leaves = _leaf_differences(a, b, "")
        for path, va, vb in leaves[:limit]:
            label = f"{topic}: {path.lstrip('.')}" if path else topic
            lines.append(f"{label} is {_value_text(va)} in the store, {_value_text(vb)} now")
        if len(leaves) > limit:
            lines.append(f"{topic}: and {len(leaves) - limit} more difference(s)")
    return lines


def _input_text(d: Any) -> str:
    if d is None:
        return "None (x2 = x1)"
    if isinstance(d, list):
        return "[" + ", ".join(_input_text(x) for x in d) + "]"
    return f"sha256 {d['sha256'][:12]} (shape {tuple(d['shape'])}, {d['dtype']})"


def _value_text(v: Any) -> str:
    if v is _ABSENT:
        return "absent"
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _leaf_differences(a: Any, b: Any, path: str) -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.get("type") != b.get("type") and "type" in a and "type" in b:
            return [(f"{path}.type", a.get("type"), b.get("type"))]
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k, _ABSENT) != b.get(k, _ABSENT):
                out += _leaf_differences(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                out += _leaf_differences(x, y, f"{path}[{i}]")
        return out
    return [(path, a, b)]


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()

