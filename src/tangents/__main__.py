"""``python -m tangents``: the same as the ``tangents`` command (see `tangents.cli`)."""

from .cli import entry

entry()
