"""When and where the session's work runs, injected so the session layer needs no Qt.

The GUI passes a Qt scheduler (timers on the event loop, napari workers for background
work: :mod:`napari_covid_attention.widgets.jobs`); tests and scripts pass
:class:`ManualScheduler`, whose background work runs at once and whose delayed calls run
when the test says so, so autosave timing is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Cancel = Callable[[], None]


class Scheduler(Protocol):
    def later(self, delay_s: float, callback: Callable[[], None]) -> Cancel:
        """Run ``callback`` on the main thread after ``delay_s``; returns a function that cancels it."""

    def background(
        self, work: Callable[[], T], done: Callable[[T], None], failed: Callable[[BaseException], None]
    ) -> None:
        """Run ``work`` off the main thread; ``done(result)`` or ``failed(exc)`` on the main thread."""


class _Call:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class ManualScheduler:
    """Background work runs immediately; delayed calls wait for :meth:`run_pending`."""

    def __init__(self) -> None:
        self._pending: list[_Call] = []

    def later(self, delay_s: float, callback: Callable[[], None]) -> Cancel:
        call = _Call(callback)
        self._pending.append(call)
        return call.cancel

    def background(self, work: Callable[[], Any], done: Callable[[Any], None], failed: Callable[[BaseException], None]) -> None:
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001 - handed to the caller's error path, like a worker
            failed(exc)
            return
        done(result)

    @property
    def pending(self) -> int:
        return sum(call.callback is not None for call in self._pending)

    def run_pending(self) -> int:
        """Run every delayed call due so far (and those they schedule); returns how many ran."""
        ran = 0
        while self.pending:
            calls, self._pending = self._pending, []
            for call in calls:
                if call.callback is not None:
                    callback, call.callback = call.callback, None
                    callback()
                    ran += 1
        return ran
