"""Private implementation of `tangents.predict` (one idea per module)."""
