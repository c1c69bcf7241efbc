"""Long work is written as generators that yield :class:`Progress` and return a result.

That one shape serves three callers: napari workers (a yield is a progress update and the
point where Cancel takes effect: anything that must not be split, such as saving a model
version and promoting it, happens between two yields), the CLI (progress bars) and plain
Python (:func:`run_to_end`). The Qt side has one adapter for it
(:mod:`napari_covid_attention.widgets.jobs`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TypeVar

Result = TypeVar("Result")


@dataclass(frozen=True)
class Progress:
    """One step of a job: ``phase`` names what is running, ``step`` of ``total`` is done.

    ``metrics`` carries numbers worth showing live (a loss, a validation Dice); phases are
    documented by each job (diagnosis: its stages; training: prepare, classifier:<member>,
    segmenter, ...).
    """

    phase: str
    step: int
    total: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total > 0 else 0.0


Job = Generator[Progress, None, Result]


def run_to_end(steps: Generator[Progress, None, Result], on_step: Callable[[Progress], None] | None = None) -> Result:
    """Drive a job generator to its end, passing each yielded event to ``on_step``."""
    while True:
        try:
            event = next(steps)
        except StopIteration as done:
            return done.value
        if on_step is not None:
            on_step(event)
