"""Deterministic DICOM UIDs, so pushing the same result twice never makes a duplicate.

``highdicom.UID()`` is random: a second export of the same mask version would become a
second series on the PACS. A UID derived from a hash of what the object *is* (source
series, mask version, kind of object) is the same every time. The ``2.25.`` root is the
one DICOM PS3.5 B.2 reserves for UIDs made from a 128-bit number, no registration needed.
"""

from __future__ import annotations

import hashlib

_ROOT = "2.25."


def derived_uid(*parts: object) -> str:
    """A ``2.25.<int>`` UID (at most 44 characters) from the sha256 of ``parts``."""
    text = "\x1f".join(str(p) for p in parts)
    number = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")
    return f"{_ROOT}{number}"
