"""Long work is written as generators that yield progress and return a result.

That one shape serves three callers: napari workers (a yield is a progress update and the
point where Cancel takes effect), the CLI (progress bars) and plain Python (this helper).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

Event = TypeVar("Event")
Result = TypeVar("Result")


def run_to_end(steps: Generator[Event, None, Result], on_step: Callable[[Event], None] | None = None) -> Result:
    """Drive a job generator to its end, passing each yielded event to ``on_step``."""
    while True:
        try:
            event = next(steps)
        except StopIteration as done:
            return done.value
        if on_step is not None:
            on_step(event)
