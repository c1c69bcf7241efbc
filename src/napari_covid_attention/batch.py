"""Batch diagnosis for the CLI: many scans in, one results CSV and NIfTI maps/masks out."""

from __future__ import annotations

import csv
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_covid_attention.atomic import write_csv_atomic, write_json_atomic
from napari_covid_attention.diagnosis import MAP_NAMES, Diagnosis, diagnose
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.io.nifti import is_nifti_path, save_nifti
from napari_covid_attention.io.volume import CTVolume
from napari_covid_attention.models.bundle import load_bundle
from napari_covid_attention.models.registry import resolve_bundle
from napari_covid_attention.pacs.urls import SeriesRef, is_url, series_ref

Scan = Path | SeriesRef  # a file or folder, or a series on a DICOMweb server (PACS)

WARNING_SEPARATOR = " | "  # between a scan's warnings in results.csv (each is one sentence)
RESULTS_NAME = "results.csv"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # spreadsheets run such cells as formulas

log = logging.getLogger(__name__)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Scan]:
    """Scans named directly, or listed in the ``image`` column of CSV files; a DICOMweb
    series URL (``http(s)://.../studies/<UID>/series/<UID>``) may stand for a scan in both."""
    scans: list[Scan] = []
    for given in inputs:
        if is_url(given):
            scans.append(series_ref(given))
            continue
        item = Path(given)
        if item.suffix.lower() == ".csv" and item.is_file():
            try:
                with open(item, newline="", encoding="utf-8-sig") as handle:
                    reader = csv.DictReader(handle)
                    if "image" not in (reader.fieldnames or ()):
                        raise UserFacingError(f"{item.name} has no 'image' column listing the scans.")
                    names = [(row.get("image") or "").strip() for row in reader]
            except (UnicodeDecodeError, csv.Error) as exc:
                raise UserFacingError(f"{item.name} is not a readable CSV list of scans ({type(exc).__name__}).") from exc
            scans += [series_ref(name) if is_url(name) else (item.parent / name).resolve() for name in names if name]
        else:
            scans.append(item.resolve())
    if not scans:
        raise UserFacingError("No scans to diagnose.")
    return scans


def diagnose_many(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    bundle: str | None = None,
    device: str = "auto",
    write_maps: bool = True,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    push: bool = False,
    report: bool = False,
) -> Path:
    """Diagnose every scan; a scan that cannot be read or diagnosed is a row of the CSV, not fatal.

    Writes ``results.csv`` (one row per scan: ``status`` ok or error with a one-sentence
    ``error``; the finding first, "No pneumonia detected" or the more likely class; then the
    classifier's ``predicted`` class and probabilities) and, per scan, a folder with
    ``summary.json`` and the lung and infection masks and the three maps as NIfTI on the
    scan's own voxel grid. The CSV is rewritten atomically after every scan, so an
    interrupted run leaves a complete table of the scans done so far.

    A DICOM input (folder, file or DICOMweb series URL) also gets ``diagnosis.seg.dcm``
    (DICOM-SEG of the masks on the source frames) and ``diagnosis.sr.dcm`` (the numbers as
    a TID 1500 SR) in its folder; column ``dicom`` says why when they could not be made.
    With ``push``, a series retrieved from a PACS gets them stored back into its study there
    (STOW-RS) after they are written locally; column ``push`` says ``stored`` or, in one
    sentence, what failed (the local outputs stay). Their UIDs derive from the source series
    and the bundle, so pushing the same diagnosis again stores no duplicate.

    With ``report``, each scan's folder also gets ``report.png`` and ``report.pdf``: one page
    for people without an SR viewer (finding, numbers, model, the most-infected slice with
    its masks, attention vs Grad-CAM); column ``report`` says why when it could not be made.

    An existing ``results.csv`` in ``out_dir`` is replaced only with ``overwrite``. Nothing is
    written through a symbolic link: ``out_dir`` and its per-scan folders must not be links,
    and output files that are links are replaced by files (the link's target is untouched).
    """
    scans = expand_inputs(inputs)
    out = _output_folder(out_dir)
    _refuse_inside_inputs(out, scans)
    table = out / RESULTS_NAME
    if os.path.lexists(table) and not overwrite:
        raise UserFacingError(f"{table} already exists; pass --overwrite to replace it, or choose another --out.")
    model = load_bundle(resolve_bundle(bundle))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserFacingError(f"Cannot create the output folder {out} ({exc.strerror or exc}).") from exc
    rows: list[dict] = []
    _write_table(table, rows)  # an earlier run's results never pass for this run's
    pacs = _PacsClients()
    try:
        for index, scan in enumerate(scans):
            rows.append(_diagnose_one(index, scan, out, model, device, write_maps, pacs, push, report))
            _write_table(table, rows)
            if progress:
                progress(index + 1, len(scans))
    finally:
        pacs.close()
    return table


def count_failed(table: str | Path) -> tuple[int, int]:
    """(scans whose status is not ok, all scans) in a results CSV written by :func:`diagnose_many`."""
    with open(table, newline="", encoding="utf-8") as handle:
        statuses = [row.get("status") for row in csv.DictReader(handle)]
    return sum(status != "ok" for status in statuses), len(statuses)


def count_push_failed(table: str | Path) -> int:
    """Diagnosed scans whose SEG and SR could not be stored on their PACS (``--push``)."""
    with open(table, newline="", encoding="utf-8") as handle:
        return sum(row.get("status") == "ok" and (row.get("push") or "stored") != "stored" for row in csv.DictReader(handle))


def _write_table(table: Path, rows: Sequence[dict]) -> None:
    fields = sorted({key for row in rows for key in row} | {"input", "status", "error"}, key=_column_order)
    try:
        write_csv_atomic(table, [{k: _cell(v) for k, v in row.items()} for row in rows], fields)
    except OSError as exc:
        raise UserFacingError(f"Cannot write {table} ({exc.strerror or exc}).") from exc


def _cell(value):
    """A string a spreadsheet would run as a formula (=, +, -, @, tab, CR first) is quoted."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class _PacsClients:
    """One :class:`~napari_covid_attention.pacs.PacsClient` per server of the inputs."""

    def __init__(self) -> None:
        self._clients: dict = {}

    def get(self, ref: SeriesRef):
        from napari_covid_attention.pacs import PacsClient

        key = (ref.base_url, ref.credentials)
        if key not in self._clients:
            self._clients[key] = PacsClient(ref.base_url, credentials=ref.credentials)
        return self._clients[key]

    def source_folder(self, ref: SeriesRef) -> Path | None:
        """The cached DICOM files of a retrieved series (the SEG's source images)."""
        return self.get(ref).cached_folder(ref.study_uid, ref.series_uid)

    def load(self, scan: Scan) -> CTVolume:
        """A file scan through ``load_ct``; a PACS series retrieved (or from the cache) first."""
        if isinstance(scan, SeriesRef):
            from napari_covid_attention.jobs import run_to_end

            return run_to_end(self.get(scan).retrieve(scan.study_uid, scan.series_uid))
        return load_ct(scan)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _diagnose_one(
    index: int, scan: Scan, out: Path, model, device: str, write_maps: bool, pacs: _PacsClients, push: bool = False,
    report: bool = False,
) -> dict:
    started = time.perf_counter()
    row: dict = {"input": str(scan)}  # a SeriesRef shows its URL without credentials
    try:
        volume = pacs.load(scan)
        result = diagnose(volume, model, device)
        row.update(status="ok", **_result_columns(result))
        is_dicom = volume.metadata.get("format") == "DICOM"
        if write_maps or report or (push and is_dicom):
            folder = _case_folder(out, f"{index:04d}_{_safe_name(scan)}")
            if write_maps:
                _write_case(folder, volume, result)
            if report:
                row["report"] = _report_page(folder, volume, result)
            row["outputs"] = str(folder)
            if is_dicom:
                row.update(_dicom_outputs(scan, volume, result, folder, pacs, push))
    except UserFacingError as exc:
        row.update(status="error", error=_one_line(str(exc)))
    except OSError as exc:  # the maps could not be written (disk full, permissions)
        log.error("The outputs of %s could not be written", scan, exc_info=True)
        row.update(status="error", error=f"The outputs could not be written ({_detail(exc)}).")
    except Exception as exc:  # a bug or MemoryError: this scan fails, the batch goes on
        log.error("%s could not be diagnosed", scan, exc_info=True)
        row.update(status="error", error=f"The scan could not be diagnosed ({_detail(exc)}).")
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


DICOM_NAME = "diagnosis"  # the case folder's diagnosis.seg.dcm and diagnosis.sr.dcm


def _dicom_outputs(scan: Scan, volume: CTVolume, result: Diagnosis, folder: Path, pacs: _PacsClients, push: bool) -> dict:
    """Write the SEG and SR of a DICOM scan; with ``push``, store them on its PACS too.

    Returns the ``dicom`` and ``push`` columns. Failures here never fail the diagnosis:
    they are one sentence in those columns (the CLI exits 2 on a failed push)."""
    from napari_covid_attention.export import dicom_outputs, read_source_datasets

    columns: dict = {}
    pushing = push and isinstance(scan, SeriesRef)  # files have no server to go back to
    try:
        source = pacs.source_folder(scan) if isinstance(scan, SeriesRef) else scan
        if source is None:
            raise UserFacingError("The retrieved series is no longer in the PACS cache.")
        datasets = read_source_datasets(source, None if isinstance(scan, SeriesRef) else volume.metadata.get("series_key"))
        paths = dicom_outputs(datasets, result, folder, name=DICOM_NAME)
    except UserFacingError as exc:
        columns["dicom"] = _one_line(str(exc))
        if pushing:
            columns["push"] = "not pushed: " + _one_line(str(exc))
        return columns
    columns["dicom"] = " ".join(p.name for p in paths)
    if pushing:
        columns["push"] = _push(scan, paths, pacs)
    return columns


def _push(ref: SeriesRef, paths: Sequence[Path], pacs: _PacsClients) -> str:
    """Store the written SEG and SR (the files as they are on disk) into the scan's study."""
    from napari_covid_attention.pacs.stow import store_files

    try:
        store_files(pacs.get(ref), paths, study_uid=ref.study_uid)
    except UserFacingError as exc:
        return _one_line(str(exc))
    except OSError as exc:
        return f"The SEG and SR could not be read back for storing ({_detail(exc)})."
    return "stored"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _detail(exc: BaseException) -> str:
    """``Type: first line of the message`` (or just the type), short enough for a CSV cell."""
    lines = str(exc).strip().splitlines()
    message = lines[0].strip().rstrip(".")[:160] if lines else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _result_columns(result: Diagnosis) -> dict:
    columns = {
        "finding": result.finding,
        "pneumonia_detected": result.pneumonia_detected,
        "pneumonia_threshold_percent": round(result.pneumonia_rule.min_infection_percent, 3),
        "predicted": result.predicted_class,  # the more likely class, pneumonia or not
        "bundle": f"{result.bundle_name} {result.bundle_version}",
        "infection_ml": round(result.infection_volume_ml, 1),
        "lung_ml": round(result.lung_volume_ml, 1),
        "infection_percent": round(result.infection_percent, 2),
    }
    for name, p in result.probabilities.items():
        columns[f"p_{name}"] = round(p, 4)
    for member in result.members:
        for name, p in member.probabilities.items():
            columns[f"p_{name}_{member.name}"] = round(p, 4)
    for name, p in (result.lesion_probabilities or {}).items():
        columns[f"p_lesion_{name}"] = round(p, 3)
    columns["warnings"] = WARNING_SEPARATOR.join(result.warnings)
    return columns


def _report_page(folder: Path, volume: CTVolume, result: Diagnosis) -> str:
    """The one-page PNG + PDF report; its path, or why it could not be made (never fatal)."""
    from napari_covid_attention.export.report_png import write_report

    try:
        return str(write_report(volume, result, folder / "report.png")[0])
    except (UserFacingError, OSError, ValueError) as exc:
        log.error("the report page of %s could not be made", folder, exc_info=True)
        return "not made: " + _one_line(str(exc) or type(exc).__name__)


def _write_case(folder: Path, volume: CTVolume, result: Diagnosis) -> None:
    ornt = volume.source_ornt
    save_nifti(folder / "lung_mask.nii.gz", result.lung_mask, volume.affine, source_ornt=ornt)
    save_nifti(folder / "infection_mask.nii.gz", result.infection_mask, volume.affine, source_ornt=ornt)
    for name in MAP_NAMES:
        save_nifti(folder / f"{name}.nii.gz", result.map_on_scan(name), volume.affine, source_ornt=ornt)
    write_json_atomic(folder / "summary.json", result.summary())


def _output_folder(out_dir: str | Path) -> Path:
    """The resolved output folder; a symbolic link as --out is refused (it leads elsewhere)."""
    given = Path(out_dir).absolute()
    if given.is_symlink():
        raise UserFacingError(f"The output folder {given} is a symbolic link; give the folder itself or another --out.")
    if given.exists() and not given.is_dir():
        raise UserFacingError(f"The output folder {given} is a file; choose another --out.")
    return given.resolve()


def _case_folder(out: Path, name: str) -> Path:
    """A scan's output folder in ``out``: created, never a link, resolving inside ``out``."""
    folder = out / name
    if folder.is_symlink():
        raise UserFacingError(f"{name} in the output folder is a symbolic link; remove it or choose another --out.")
    folder.mkdir(exist_ok=True)
    if folder.resolve().parent != out.resolve():
        raise UserFacingError(f"{name} in the output folder leads outside it; remove it or choose another --out.")
    return folder


def _input_folders(scans: Sequence[Scan]):
    """Folders given as input, and the folder of each input file that is not NIfTI or CSV
    (a .dcm/.ima file or a DICOMDIR: its folder is the DICOM series)."""
    for scan in scans:
        if isinstance(scan, SeriesRef):
            continue
        if scan.is_dir():
            yield scan
        elif scan.is_file() and not is_nifti_path(scan) and scan.suffix.lower() != ".csv":
            yield scan.parent


def _refuse_inside_inputs(out: Path, scans: Sequence[Scan]) -> None:
    """Never write into a scan folder given as input (a DICOM folder must stay as it came)."""
    for folder in _input_folders(scans):
        if out == folder or folder in out.parents:
            raise UserFacingError(f"The output folder {out} is inside the input folder {folder}; choose another --out.")


def _safe_name(path: Scan) -> str:
    name = f"series-{path.series_uid}" if isinstance(path, SeriesRef) else path.name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "scan"


def _column_order(name: str) -> tuple:
    first = ["input", "status", "finding", "pneumonia_detected", "predicted"]
    return (first.index(name) if name in first else len(first), name)
