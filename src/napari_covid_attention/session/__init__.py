"""The GUI's state without Qt: one :class:`Session` per viewer, one :class:`ScanSession` per CT.

Widgets listen to these objects (psygnal signals) and forward clicks to them; the logic is
unit-tested on ``napari.components.ViewerModel`` with a :class:`ManualScheduler`.
"""

from napari_covid_attention.session.correction import MaskCorrection
from napari_covid_attention.session.models import ModelChoice
from napari_covid_attention.session.scan import ScanSession
from napari_covid_attention.session.scheduler import ManualScheduler, Scheduler
from napari_covid_attention.session.session import Session, session_for

__all__ = ["ManualScheduler", "MaskCorrection", "ModelChoice", "ScanSession", "Scheduler", "Session", "session_for"]
