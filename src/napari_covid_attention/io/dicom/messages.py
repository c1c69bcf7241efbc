"""How pydicom's output becomes the reader's one-sentence messages.

pydicom warns about odd headers, logs decoder failures with tracebacks and raises
exceptions whose text spans several lines. A user of this reader must see none of that
directly: what matters ends in a :class:`CTLoadError` or a :class:`CTVolume` warning,
both single sentences. This module holds the two helpers every other module of the
package uses for that: muting pydicom while reading, and shortening its messages.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_pydicom() -> Iterator[list[warnings.WarningMessage]]:
    """Record pydicom's warnings and mute its loggers while reading.

    Header chatter (odd VRs, invalid values) is noise for a user, and pydicom logs decoder
    failures with tracebacks; what matters becomes a refusal or a CTVolume warning, and
    decoder warnings are summarised by the reader.
    """
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)  # its child loggers inherit this level
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        logger.setLevel(level)


def short_message(exc: object) -> str:
    """An exception or warning as a short clause (no newlines, no end punctuation).

    pydicom's "...all available plugins:" messages name the actual failure on the next
    line, so that line is kept too.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text[:150].rstrip(" .:;")
