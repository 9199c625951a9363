"""``python -m tangents``: the same as the ``tangents`` command (see `tangents.cli`)."""

from .cli import main

raise SystemExit(main())
