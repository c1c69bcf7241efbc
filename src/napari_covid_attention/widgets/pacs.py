"""The "PACS" dock: find a study on a DICOMweb server, open a series as a CT, send results back.

Searches run in the background on the session's scheduler; retrieving a series and
sending a SEG and SR are jobs through the one job adapter (:mod:`.jobs`): progress,
Cancel, one notification per error. A retrieved CT remembers where it came from in its
layer's plugin metadata (server and UIDs, never credentials), so "Send to PACS" needs
nothing but the session's active scan. The dock keeps only what it shows (the search
results); the scan, its diagnosis and its case live in the session.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_covid_attention._layer_data import META_KEY, ct_layer_data, plugin_meta
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.jobs import Job, Progress
from napari_covid_attention.pacs.client import RETRIEVE_PHASE
from napari_covid_attention.pacs.urls import redact, service_root
from napari_covid_attention.settings import load_settings, save_setting
from napari_covid_attention.widgets.jobs import JobRunner, notify_failure, session_of
from napari_covid_attention.widgets.scrolling import ScrollingDock

if TYPE_CHECKING:
    import napari

    from napari_covid_attention.annotations import AnnotationStore
    from napari_covid_attention.annotations.index import Version
    from napari_covid_attention.diagnosis import Diagnosis
    from napari_covid_attention.io.volume import CTVolume
    from napari_covid_attention.pacs import SeriesMatch, StoreResult, StudyMatch
    from napari_covid_attention.session import ScanSession

PACS_KEY = "pacs"  # metadata["covid_attention"]["pacs"] of a CT retrieved from a PACS
URL_SETTING = "pacs_url"
SEND_NAME = "covid-attention"  # the temporary SEG and SR files' stem
_NOT_STORED = "nothing was stored; the local version is intact"


# ----- Qt-free helpers ---------------------------------------------------------------------
def pacs_origin(layer: Any) -> dict | None:
    """Where a CT layer was retrieved from (``server``, ``study_uid``, ``series_uid``), or None."""
    origin = (plugin_meta(getattr(layer, "metadata", None) or {}) or {}).get(PACS_KEY)
    return origin if isinstance(origin, dict) and origin.get("server") else None


def pacs_ct_layer_data(volume: CTVolume, name: str, server: str, study_uid: str, series_uid: str):
    """:func:`ct_layer_data` of a retrieved series, remembering its server (no credentials) and UIDs."""
    data, kwargs, kind = ct_layer_data(volume, name)
    origin = {"server": redact(server), "study_uid": study_uid, "series_uid": series_uid}
    kwargs["metadata"][META_KEY][PACS_KEY] = origin
    return data, kwargs, kind


def series_layer_name(study: StudyMatch | None, series: SeriesMatch) -> str:
    """``patient · series description`` (or its number): what a radiologist tells scans apart by."""
    what = _shown(series.description) or (
        f"series {series.series_number}" if series.series_number is not None else "CT"
    )
    patient = study.patient_id if study is not None else ""
    return f"{patient} · {what}" if patient else what


def send_refusal(scan: ScanSession | None) -> str | None:
    """Why the active scan's SEG and SR cannot be sent (one sentence), or None when they can."""
    if scan is None:
        return "Open a CT and diagnose it; then its SEG and SR can be sent to a PACS."
    meta = plugin_meta(scan.ct_layer.metadata) or {}
    kind = (meta.get("dicom") or {}).get("format")
    if kind == "NIfTI":
        return "A NIfTI scan cannot be sent: a DICOM-SEG must reference the DICOM images it was drawn on."
    if kind != "DICOM" and pacs_origin(scan.ct_layer) is None:
        return "This scan was not opened from DICOM files, so there are no DICOM images for a SEG to reference."
    if scan.diagnosis is None:
        return "Diagnose this scan first: the SEG holds its lung and infection masks."
    correction = scan.correction
    if correction is None or correction.case is None or not correction.history():
        return "The infection mask's case is still opening in the annotation store; try again in a moment."
    return None


def _not_stored(text: str) -> str:
    """A failed send's sentence; a partial store already says what was stored."""
    text = " ".join(text.split()).rstrip(".")
    return f"{text}; the local version is intact." if " were stored" in text else f"{text}; {_NOT_STORED}."


@dataclass(frozen=True)
class SendPlan:
    """What "Send to PACS" sends, fixed on the main thread when the button is pressed."""

    connect_url: str  # the service root, or the URL field's text (its credentials, if any)
    server: str  # the service root as shown
    origin: dict | None  # where the scan was retrieved from; None for DICOM files
    source_path: str | None
    series_key: str | None
    diagnosis: Diagnosis
    store: AnnotationStore
    case_id: int
    version: Version
    annotator: str | None  # None for the model's own mask (the original)

    @property
    def what(self) -> str:
        return f"version {self.version.id}" if self.annotator else f"the model's masks (version {self.version.id})"

    def job(self) -> Job[StoreResult]:
        """(worker) Write the SEG and SR of the version into a temporary folder, then STOW them.

        Only reads the annotation store; any failure is one sentence saying nothing was stored.
        """
        from napari_covid_attention.export import dicom_outputs, read_source_datasets
        from napari_covid_attention.pacs import PacsClient
        from napari_covid_attention.pacs.stow import store_files

        try:
            with PacsClient(self.connect_url) as client:
                if self.origin is not None:  # the cached copy (no request), downloaded again if evicted
                    source = yield from client.retrieve_folder(self.origin["study_uid"], self.origin["series_uid"])
                else:
                    source = self.source_path
                yield Progress("writing the SEG and SR", 1, 3)
                datasets = read_source_datasets(source, self.series_key)
                mask = self.store.load_version(self.case_id, self.version.id)
                with tempfile.TemporaryDirectory(prefix="covid-attention-send-") as folder:
                    paths = dicom_outputs(
                        datasets, self.diagnosis, folder, name=SEND_NAME,
                        lung_mask=self.diagnosis.lung_mask, infection_mask=mask,
                        annotator=self.annotator, mask_version=self.version.id if self.annotator else None,
                    )
                    yield Progress("sending", 2, 3)
                    result = store_files(client, paths, study_uid=str(datasets[0].StudyInstanceUID))
        except UserFacingError as exc:
            raise UserFacingError(_not_stored(str(exc))) from exc
        except OSError as exc:
            raise UserFacingError(_not_stored(f"The SEG and SR could not be written ({exc.strerror or exc})")) from exc
        yield Progress("sent", 3, 3)
        return result


# ----- the dock ----------------------------------------------------------------------------
class PacsWidget(ScrollingDock):
    """Dock widget; ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.session = session_of(napari_viewer)
        self.viewer = self.session.viewer  # the viewer itself, not napari's proxy of it
        self.retriever = JobRunner("retrieving the series")
        self.sender = JobRunner("sending to the PACS")
        self._studies: list[StudyMatch] = []  # what the tables show
        self._series: list[SeriesMatch] = []
        self._searches = 0  # a late answer to an earlier search is dropped
        self._scan: ScanSession | None = None  # whose send state is shown
        self._correction = None

        layout = self.content_layout
        layout.addWidget(self._search_box())
        layout.addWidget(self._open_box())
        layout.addWidget(self._send_box())
        layout.addStretch(1)
        self.session.active_changed.connect(self._show_scan)
        self.destroyed.connect(self._disconnect)
        self._show_scan(self.session.active)

    def _disconnect(self, *_args) -> None:
        self.session.active_changed.disconnect(self._show_scan)

    # ----- construction -------------------------------------------------------------
    def _search_box(self) -> QGroupBox:
        box = QGroupBox("Server and search")
        grid = QGridLayout(box)
        self.url = QLineEdit(load_settings().get(URL_SETTING, ""))
        self.url.setPlaceholderText("http://host:8042/dicom-web")
        self.url.setToolTip(
            "The DICOMweb service root. Credentials come from the environment or ~/.netrc (docs/pacs.md); "
            "any typed into the URL are used but never saved."
        )
        self.url.editingFinished.connect(self._remember_url)
        self.url.textChanged.connect(self._refresh_send)
        self.patient_id = QLineEdit()
        self.patient_id.setPlaceholderText("any")
        self.accession = QLineEdit()
        self.accession.setPlaceholderText("any")
        self.dates = QLineEdit()
        self.dates.setPlaceholderText("YYYYMMDD-YYYYMMDD")
        self.dates.setToolTip("A study date or range; either end may be left open (20200101-).")
        self.ct_only = QCheckBox("CT only")
        self.ct_only.setChecked(True)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(lambda: self.search())
        for field in (self.patient_id, self.accession, self.dates):
            field.returnPressed.connect(self.search)
        grid.addWidget(QLabel("Server"), 0, 0)
        grid.addWidget(self.url, 0, 1, 1, 3)
        grid.addWidget(QLabel("Patient ID"), 1, 0)
        grid.addWidget(self.patient_id, 1, 1)
        grid.addWidget(QLabel("Accession"), 1, 2)
        grid.addWidget(self.accession, 1, 3)
        grid.addWidget(QLabel("Dates"), 2, 0)
        grid.addWidget(self.dates, 2, 1, 1, 3)
        grid.addWidget(self.ct_only, 3, 1)
        grid.addWidget(self.search_button, 3, 3)
        return box

    def _open_box(self) -> QGroupBox:
        box = QGroupBox("Studies and series")
        layout = QVBoxLayout(box)
        self.studies = _table(["date", "patient", "accession", "description", "series"], stretch=3)
        self.studies.itemSelectionChanged.connect(self._study_selected)
        self.series_table = _table(["#", "description", "modality", "images"], stretch=1)
        self.series_table.itemDoubleClicked.connect(lambda _item: self.open_selected())
        layout.addWidget(self.studies)
        layout.addWidget(self.series_table)
        row = QHBoxLayout()
        self.open_button = QPushButton("Open")
        self.open_button.setToolTip("Retrieve the selected series (or use the cached copy) and add it as a CT layer")
        self.open_button.clicked.connect(lambda: self.open_selected())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.open_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.progress = QProgressBar()
        self.status = QLabel("Type the server's address and press Search.")
        self.status.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        return box

    def _send_box(self) -> QGroupBox:
        box = QGroupBox("Send to PACS")
        layout = QVBoxLayout(box)
        self.send_target = QLabel("")
        self.send_target.setWordWrap(True)
        self.send_button = QPushButton("Send SEG and SR to PACS")
        self.send_button.clicked.connect(lambda: self.send())
        self.send_status = QLabel("")
        self.send_status.setWordWrap(True)
        layout.addWidget(self.send_target)
        layout.addWidget(self.send_button)
        layout.addWidget(self.send_status)
        return box

    # ----- search ---------------------------------------------------------------------
    def _remember_url(self) -> None:
        text = self.url.text().strip()
        save_setting(URL_SETTING, redact(text) if text else None)  # never the credentials

    def search(self) -> None:
        """Studies matching the fields (in the background); the table shows them."""
        url = self.url.text().strip()
        if not url:
            notify_failure(UserFacingError("Type the PACS address (its DICOMweb service root) first."), "searching")
            return
        self._remember_url()
        filters = {
            "patient_id": self.patient_id.text().strip() or None,
            "accession_number": self.accession.text().strip() or None,
            "date": self.dates.text().strip() or None,
            "modality": "CT" if self.ct_only.isChecked() else None,
        }
        self.status.setText(f"Searching {redact(url)}…")
        self._query(url, lambda client: client.search_studies(**filters), "searching the PACS", self._show_studies)

    def _query(self, url: str, ask, what: str, show) -> None:
        """Run ``ask(client)`` in the background and hand its answer to ``show(token, found)``;
        a newer search or selection makes the token stale, so late answers are dropped."""
        self._searches += 1
        token = self._searches

        def work() -> list:
            from napari_covid_attention.pacs import PacsClient

            with PacsClient(url) as client:
                return ask(client)

        def failed(exc: BaseException) -> None:
            if token == self._searches:
                self.status.setText(notify_failure(exc, what))

        self.session.scheduler.background(work, lambda found: show(token, found), failed)

    def _show_studies(self, token: int, found: list[StudyMatch]) -> None:
        if token != self._searches:
            return
        self._studies, self._series = list(found), []
        self.series_table.setRowCount(0)
        _fill(self.studies, [
            (_date(s.study_date), s.patient_id, s.accession_number, _shown(s.description), _count(s.n_series))
            for s in found
        ], tooltips=[f"Study {s.study_uid}" for s in found])
        count = f"{len(found)} stud{'y' if len(found) == 1 else 'ies'} found"
        self.status.setText(f"{count}; select one to list its series." if found else f"{count}.")
        if len(found) == 1:
            self.studies.selectRow(0)

    def _study_selected(self) -> None:
        study = self.selected_study()
        self._series = []
        self.series_table.setRowCount(0)
        if study is None:
            return
        url, modality = self.url.text().strip(), "CT" if self.ct_only.isChecked() else None
        self.status.setText("Listing the study's series…")
        self._query(url, lambda client: client.search_series(study.study_uid, modality=modality), "listing the series", self._show_series)

    def _show_series(self, token: int, found: list[SeriesMatch]) -> None:
        if token != self._searches:
            return
        self._series = list(found)
        _fill(self.series_table, [
            ("" if s.series_number is None else str(s.series_number), _shown(s.description), s.modality,
             _count(s.n_instances))
            for s in found
        ], tooltips=[s.url for s in found])
        if found:
            self.series_table.selectRow(0)
            self.status.setText(f"{len(found)} series; select one and press Open.")
        else:
            self.status.setText("This study has no series to open.")

    def selected_study(self) -> StudyMatch | None:
        return _selected(self.studies, self._studies)

    def selected_series(self) -> SeriesMatch | None:
        return _selected(self.series_table, self._series)

    # ----- open -----------------------------------------------------------------------
    def open_selected(self, threaded: bool = True):
        """Retrieve the selected series (progress, Cancel) and add it as a CT layer."""
        series = self.selected_series()
        if series is None:
            notify_failure(UserFacingError("Search, then select a series to open."), "opening a series")
            return None
        if self.retriever.running:
            return None
        url, name = self.url.text().strip(), series_layer_name(self.selected_study(), series)

        def job() -> Job:
            from napari_covid_attention.pacs import PacsClient

            with PacsClient(url) as client:
                return (yield from client.retrieve(series.study_uid, series.series_uid))

        self._set_busy(True)
        self.status.setText(f"Retrieving {name}…")
        return self.retriever.start(
            job,
            progress=self._on_progress,
            done=lambda volume: self._opened(volume, name, series),
            failed=self._open_failed,
            finished=self._open_finished,
            threaded=threaded,
        )

    def cancel(self) -> None:
        """Stop the retrieval at the next image; nothing is cached or added."""
        if self.retriever.running:
            self.retriever.cancel()
            self.status.setText("Cancelling…")

    def _on_progress(self, event: Progress) -> None:
        self.progress.setMaximum(max(event.total, 1))
        self.progress.setValue(event.step)
        if event.step >= event.total:
            self.status.setText(f"Reading the {event.total} images…")
        else:
            self.status.setText(f"Retrieved {event.step} of {event.total} images…")

    def _opened(self, volume: CTVolume, name: str, series: SeriesMatch) -> None:
        data, kwargs, _ = pacs_ct_layer_data(volume, name, series.base_url, series.study_uid, series.series_uid)
        layer = self.viewer.add_image(data, **kwargs)  # the session tracks it like any CT
        self.viewer.layers.selection.active = layer
        self.status.setText(f"Opened {name} ({volume.shape[0]} slices) from {series.base_url}.")

    def _open_failed(self, sentence: str) -> None:
        self.progress.setValue(0)
        self.status.setText(f"Not opened: {sentence}")

    def _open_finished(self, cancelled: bool) -> None:
        self._set_busy(False)
        if cancelled:
            self.progress.setValue(0)
            self.status.setText("Cancelled; nothing was kept or added.")

    def _set_busy(self, busy: bool) -> None:
        self.open_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if busy:
            self.progress.setValue(0)

    # ----- send -----------------------------------------------------------------------
    def _show_scan(self, scan: ScanSession | None) -> None:
        if self._scan is not None:
            self._scan.diagnosed.disconnect(self._refresh_send)
            self._scan.correction_changed.disconnect(self._rebind)
        self._scan = scan
        if scan is not None:
            scan.diagnosed.connect(self._refresh_send)
            scan.correction_changed.connect(self._rebind)
        self._rebind()

    def _rebind(self) -> None:
        """Listen to the active scan's correction: each saved version changes what is sent."""
        if self._correction is not None:
            self._correction.history_changed.disconnect(self._refresh_send)
        self._correction = None if self._scan is None else self._scan.correction
        if self._correction is not None:
            self._correction.history_changed.connect(self._refresh_send)
        self._refresh_send()

    def _target(self, scan: ScanSession) -> tuple[str, str]:
        """(URL to connect with, server as shown): the scan's own PACS, else the URL field's."""
        typed = self.url.text().strip()
        origin = pacs_origin(scan.ct_layer)
        if origin is not None:
            same = bool(typed) and _root_or_none(typed) == origin["server"]
            return (typed if same else origin["server"]), origin["server"]
        if not typed:
            raise UserFacingError("Type the PACS address above: this scan came from files, not from a PACS.")
        return typed, service_root(typed)

    def send_plan(self) -> SendPlan:
        """What Send would send now, or a one-sentence reason why it cannot."""
        scan = self.session.active
        reason = send_refusal(scan)
        if reason is not None:
            raise UserFacingError(reason)
        connect_url, server = self._target(scan)
        correction = scan.correction
        version = correction.history()[-1]
        meta = plugin_meta(scan.ct_layer.metadata) or {}
        original = version.kind == "original"
        return SendPlan(
            connect_url=connect_url,
            server=server,
            origin=pacs_origin(scan.ct_layer),
            source_path=meta.get("source_path"),
            series_key=(meta.get("dicom") or {}).get("series_key"),
            diagnosis=scan.diagnosis,
            store=correction.store,
            case_id=correction.case.id,
            version=version,
            annotator=None if original else (version.annotator or self.session.annotator or None),
        )

    def _refresh_send(self, *_args) -> None:
        if self.sender.running:
            return
        try:
            plan = self.send_plan()
        except UserFacingError as exc:
            self.send_button.setEnabled(False)
            self.send_button.setToolTip(str(exc))
            self.send_target.setText(str(exc))
            return
        self.send_button.setEnabled(True)
        text = f"Sends {plan.what} of {self.session.active.name} to {plan.server}."
        self.send_button.setToolTip(text)
        self.send_target.setText(text)

    def send(self, threaded: bool = True):
        """Send the SEG and SR of the active scan's current version (a job)."""
        if self.sender.running:
            return None
        correction = None if self.session.active is None else self.session.active.correction
        if correction is not None and correction.unsaved:
            correction.save_now()  # at once on a manual scheduler, in the background on Qt
            if correction.unsaved:
                self.send_status.setText("Your latest edits are being saved; press Send again once they are.")
                return None
        try:
            plan = self.send_plan()
        except UserFacingError as exc:
            self.send_status.setText(notify_failure(exc, "sending to the PACS"))
            return None
        self.send_button.setEnabled(False)
        self.send_status.setText(f"Sending {plan.what} to {plan.server}…")
        return self.sender.start(
            plan.job,
            progress=lambda event: self.send_status.setText(_send_step(event)),
            done=lambda _result: self.send_status.setText(
                f"Sent SEG and SR of {plan.what} to {plan.server}."
            ),
            failed=self.send_status.setText,
            finished=lambda _cancelled: self._refresh_send(),
            threaded=threaded,
        )


# ----- small Qt helpers ------------------------------------------------------------------
def _table(headers: list[str], *, stretch: int) -> QTableWidget:
    """A read-only, single-row-selection table whose ``stretch`` column takes the spare width."""
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.verticalHeader().setVisible(False)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setWordWrap(False)
    header = table.horizontalHeader()
    for column in range(len(headers)):
        mode = QHeaderView.ResizeMode.Stretch if column == stretch else QHeaderView.ResizeMode.ResizeToContents
        header.setSectionResizeMode(column, mode)
    table.setMaximumHeight(150)
    return table


def _fill(table: QTableWidget, rows: list[tuple[str, ...]], *, tooltips: list[str]) -> None:
    table.clearSelection()
    table.setRowCount(len(rows))
    for r, (row, tip) in enumerate(zip(rows, tooltips, strict=True)):
        for c, text in enumerate(row):
            item = QTableWidgetItem(text)
            item.setToolTip(f"{text}\n{tip}" if text else tip)
            if text.isdigit() and c == len(row) - 1:
                item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
            table.setItem(r, c, item)


def _selected(table: QTableWidget, items: list) -> Any:
    rows = {index.row() for index in table.selectionModel().selectedRows()}
    return items[min(rows)] if rows and min(rows) < len(items) else None


def _send_step(event: Progress) -> str:
    if event.phase == RETRIEVE_PHASE:
        return f"Reading the source images ({event.step} of {event.total})…"
    return f"{event.phase.capitalize()}…"


def _root_or_none(url: str) -> str | None:
    try:
        return service_root(url)
    except UserFacingError:
        return None


def _shown(text: str) -> str:
    """A DICOM description as read: ``^`` separates its parts, runs of spaces are padding."""
    return " ".join(text.replace("^", " ").split())


def _count(value: int | None) -> str:
    return "" if value is None else str(value)


def _date(text: str) -> str:
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text
