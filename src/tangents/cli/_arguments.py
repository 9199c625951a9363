"""Argument types shared by the commands (argparse ``type=`` functions).

Standard library only: commands parse their arguments before importing torch, so these check
the form of a value (a device name by its spelling, not by asking torch).
"""

from __future__ import annotations

import argparse
import math
import re

__all__ = ["DEVICE", "device", "learning_rate_or_auto", "non_negative_int", "positive_int"]

#: The spelling of a torch device name: ``cpu``, ``cuda`` or ``cuda:N``.
DEVICE = re.compile(r"(cpu|cuda)(:\d+)?")


def _int_at_least(text: str, low: int, what: str) -> int:
    """``text`` as an integer ``>= low``; otherwise an argparse error saying ``expected what``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0, "a non-negative integer")


def learning_rate_or_auto(text: str) -> float | None:
    """A positive finite learning rate, or ``auto`` (``None``: the command chooses)."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number, got {text!r}")
    return value


def device(text: str) -> str:
    """A device name, checked by its form only (torch is not imported while parsing)."""
    if not DEVICE.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"expected a torch device such as 'cpu' or 'cuda:0', got {text!r}")
    return text.strip()
