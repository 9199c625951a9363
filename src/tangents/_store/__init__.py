"""Internals of `tangents.store`: the on-disk format (`_format`) and fingerprints (`_fingerprint`)."""

__all__: list[str] = []
