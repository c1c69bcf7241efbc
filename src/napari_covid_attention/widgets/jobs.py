"""The one Qt adapter for jobs and the session's scheduler.

Any job (a generator of :class:`~napari_covid_attention.jobs.Progress`) runs in a napari
worker with progress, cancel, result and a single error path: a
:class:`~napari_covid_attention.errors.UserFacingError` is a message (a warning, not an
error with a traceback), anything else is logged and shown once. Handing ``errored`` to
``create_worker`` is what stops superqt from re-raising, which showed every error twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QTimer

from napari_covid_attention.errors import UserFacingError

log = logging.getLogger(__name__)


def notify_failure(exc: BaseException, what: str) -> str:
    """Show one notification for a failed job; returns the sentence shown."""
    from napari.utils.notifications import show_error, show_warning

    if isinstance(exc, UserFacingError):
        show_warning(str(exc))
        return str(exc)
    log.error("%s failed", what, exc_info=exc)
    text = f"{what.capitalize()} failed unexpectedly ({type(exc).__name__}: {exc})."
    show_error(text)
    return text


class JobRunner:
    """Runs one job at a time for a widget: ``start`` it, ``cancel`` it between steps."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.worker = None
        self.cancelled = False

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        job: Callable[[], Any],
        *,
        progress: Callable[[Any], None],
        done: Callable[[Any], None],
        failed: Callable[[str], None],
        finished: Callable[[bool], None],
        threaded: bool = True,
    ):
        """``finished(cancelled)`` always comes last; ``failed`` gets the sentence shown."""
        from napari.qt.threading import create_worker

        from napari_covid_attention.jobs import run_to_end

        self.cancelled = False
        if not threaded:
            try:
                done(run_to_end(job(), progress))
            except Exception as exc:  # noqa: BLE001 - the same single error path as a worker
                failed(notify_failure(exc, self.what))
            finished(False)
            return None

        def beside_the_gui():
            from napari_covid_attention.models.device import one_core_for_the_gui

            with one_core_for_the_gui():  # torch on every core starves napari's main thread
                return (yield from job())

        # errored must be given to create_worker: connected afterwards, superqt's own
        # re-raise stays connected too and every error is shown twice.
        worker = create_worker(
            beside_the_gui,
            _progress={"desc": self.what},
            _start_thread=False,
            _connect={"errored": lambda exc: failed(notify_failure(exc, self.what))},
        )
        worker.yielded.connect(progress)
        worker.returned.connect(done)
        worker.finished.connect(self._finished(finished))
        self.worker = worker
        worker.start()
        return worker

    def _finished(self, finished: Callable[[bool], None]) -> Callable[[], None]:
        def on_finished() -> None:
            self.worker = None
            finished(self.cancelled)

        return on_finished

    def cancel(self) -> None:
        if self.worker is not None:
            self.cancelled = True
            self.worker.quit()


class QtScheduler:
    """The session's scheduler on Qt: timers on the event loop, napari workers off it."""

    def __init__(self) -> None:
        self._workers: set = set()

    def later(self, delay_s: float, callback: Callable[[], None]):
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(callback)
        timer.timeout.connect(lambda: self._workers.discard(timer))
        self._workers.add(timer)  # kept alive until it fires
        timer.start(int(delay_s * 1000))

        def cancel() -> None:
            timer.stop()
            self._workers.discard(timer)

        return cancel

    def background(self, work, done, failed) -> None:
        from napari.qt.threading import create_worker

        worker = create_worker(work, _connect={"errored": failed}, _start_thread=False)  # see JobRunner.start
        worker.returned.connect(done)
        worker.finished.connect(lambda: self._workers.discard(worker))
        self._workers.add(worker)
        worker.start()


def session_of(viewer):
    """The viewer's one Session, on the Qt scheduler (shared by every dock of the viewer)."""
    from napari_covid_attention.session import session_for

    return session_for(viewer, QtScheduler)
