"""The scikit-learn face of tangents (see `tangents.sklearn`, the table of contents)."""
