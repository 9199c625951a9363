"""Internals of `tangents.store`: fingerprints (`_fingerprint`), the on-disk format and block
writer (`_format`), computing into a store (`_compute`) and reading one (`_read`)."""

__all__: list[str] = []
