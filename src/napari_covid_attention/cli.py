"""``napari-covid-attention`` command line: the same core functions the widgets call."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_covid_attention import __version__
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.jobs import run_to_end

TRAIN = "training.trainer:TrainConfig"
PREPROCESS = "preprocess.pipeline:PreprocessConfig"
CLASSIFIER = "models.dsanet:DSANetConfig"
SEGMENTER = "models.segmenter:SegmenterConfig"
LOSS = "training.losses:LossConfig"
FINETUNE = "training.finetune:FinetuneConfig"
EVALUATE = "training.evaluate:evaluate_bundle"
SYNTH = "data.synthetic:write_dataset"
INSERT = "data.lesion_insertion:write_inserted_dataset"


def _owner(source: str):
    """The dataclass or function ``module:name`` (under this package) whose defaults an option uses."""
    module, name = source.split(":")
    return getattr(importlib.import_module(f"napari_covid_attention.{module}"), name)


def _config_default(source: str, field: str):
    owner = _owner(source)
    if dataclasses.is_dataclass(owner):
        spec = owner.__dataclass_fields__[field]
        if spec.default is not dataclasses.MISSING:
            return spec.default
        return None if spec.default_factory is dataclasses.MISSING else spec.default_factory()
    default = inspect.signature(owner).parameters[field].default
    return None if default is inspect.Parameter.empty else default


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


class _FromConfig(argparse.Action):
    """An option whose default lives in a config dataclass or a function signature, the one
    place for it: a value is stored only when given (in ``namespace.given[source][field]``),
    and --help reads the default from its source when shown (so building the parser imports
    no torch)."""

    def __init__(self, option_strings, dest, *, source: str, field: str, flag: bool = False, help=None, **kwargs):
        self.source, self.field, self.ready = source, field, False
        if flag:
            kwargs.update(nargs=0)
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=help, **kwargs)
        self.flag = flag

    def __call__(self, parser, namespace, values, option_string=None):
        value = True if self.flag else tuple(values) if isinstance(values, list) else values
        given = getattr(namespace, "given", None) or {}
        given.setdefault(self.source, {})[self.field] = value
        namespace.given = given

    @property
    def help(self):
        if not self.ready or self.flag:  # argparse >= 3.13 checks the help while adding the option
            return self._help
        default = _config_default(self.source, self.field)
        if default is None:
            return self._help
        text = f"default {_shown(default)}".replace("%", "%%")
        return f"{self._help}; {text}" if self._help else text

    @help.setter
    def help(self, text):
        self._help = text


def _option(parser: argparse.ArgumentParser, *flags: str, source: str, field: str | None = None, **kwargs) -> None:
    """Add a :class:`_FromConfig` option; ``field`` defaults to the option's name."""
    field = field or flags[0].lstrip("-").replace("-", "_")
    action = parser.add_argument(*flags, action=_FromConfig, source=source, field=field, **kwargs)
    action.ready = True


def _given(args: argparse.Namespace, source: str) -> dict:
    """The options the user gave for ``source`` (see :class:`_FromConfig`), by field name."""
    return dict((getattr(args, "given", None) or {}).get(source, {}))


def _tqdm_progress(description: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar, and a function closing it."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="scan", dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def _cmd_synth(args: argparse.Namespace) -> int:
    from napari_covid_attention.data.synthetic import write_dataset

    progress, close = _tqdm_progress("synthetic scans")
    try:
        manifest = write_dataset(
            args.out, args.n, workers=args.workers, overwrite=args.overwrite, progress=progress, **_given(args, SYNTH)
        )
    except ValueError as exc:  # bad arguments or a folder that already holds a dataset
        raise UserFacingError(str(exc)) from exc
    finally:
        close()
    print(f"wrote {args.n} synthetic scans; manifest: {manifest}")
    return 0


def _cmd_insert_lesions(args: argparse.Namespace) -> int:
    from functools import partial

    from napari_covid_attention.data.lesion_insertion import load_host, write_inserted_dataset

    if args.out.exists() and any(args.out.iterdir()):
        raise UserFacingError(f"{args.out} is not empty; choose a new folder.")
    hosts = [(Path(h).name.split(".")[0], partial(load_host, h, args.annotations)) for h in args.hosts]
    progress, close = _tqdm_progress("inserted-lesion scans")
    try:
        manifest = write_inserted_dataset(hosts, args.out, args.n_per_host, progress=progress, **_given(args, INSERT))
    finally:
        close()
    print(f"wrote {args.n_per_host * len(hosts)} scans from {len(hosts)} real hosts; manifest: {manifest}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from napari_covid_attention.models.bundle import DEMO_LABEL
    from napari_covid_attention.models.dsanet import DSANetConfig
    from napari_covid_attention.models.segmenter import SegmenterConfig
    from napari_covid_attention.preprocess.pipeline import PreprocessConfig
    from napari_covid_attention.training.losses import LossConfig
    from napari_covid_attention.training.trainer import TrainConfig, cross_validate, train_bundle

    segmenter = _given(args, SEGMENTER)
    if "channels" in segmenter:
        segmenter["strides"] = (2,) * (len(segmenter["channels"]) - 1)
    options = _given(args, TRAIN)
    if args.demo:
        options["label"] = DEMO_LABEL
    config = TrainConfig(
        **options,
        preprocessing=PreprocessConfig(**_given(args, PREPROCESS)),
        classifier=DSANetConfig(**_given(args, CLASSIFIER)),
        segmenter=SegmenterConfig(**segmenter),
        loss=LossConfig(**_given(args, LOSS)),
        command="napari-covid-attention " + " ".join(args.argv),
        training_data=_data_sources(args.data_sources),
    )
    run = cross_validate(config, args.folds) if args.folds else train_bundle(config)
    result = _drive(run)
    if result is not None:
        print(f"saved: {result}")
    return 0


def _data_sources(path: Path | None) -> tuple[dict, ...]:
    """The --data-sources JSON: a list of {name, kind, licence, citation} objects."""
    if path is None:
        return ()
    import json

    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"Cannot read the data sources file {path}: {exc}") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) and e.get("kind") in ("synthetic", "real") for e in entries):
        raise UserFacingError(f"{path.name} must be a JSON list of objects, each with kind 'synthetic' or 'real'.")
    return tuple(entries)


def _drive(run):
    """Consume a training generator, drawing one tqdm bar per phase; returns its result."""
    from tqdm import tqdm

    state = {"bar": None, "phase": None}

    def show(event) -> None:
        if event.phase != state["phase"]:
            if state["bar"] is not None:
                state["bar"].close()
            state["phase"] = event.phase
            state["bar"] = tqdm(total=event.total, desc=event.phase, dynamic_ncols=True)
        bar = state["bar"]
        bar.total, bar.n = event.total, event.step
        if event.metrics:
            bar.set_postfix({k: f"{v:.4g}" for k, v in event.metrics.items()}, refresh=False)
        bar.refresh()

    try:
        return run_to_end(run, show)
    finally:
        if state["bar"] is not None:
            state["bar"].close()


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_covid_attention.models.bundle import load_bundle
    from napari_covid_attention.models.registry import resolve_bundle
    from napari_covid_attention.training.evaluate import evaluate_bundle

    bundle = load_bundle(resolve_bundle(args.bundle))
    progress, close = _tqdm_progress("evaluating")
    try:
        report = run_to_end(
            evaluate_bundle(bundle, args.manifest, args.out, **_given(args, EVALUATE)),
            lambda step: progress(step.step, step.total),
        )
    finally:
        close()
    overall = report["overall"]["ensemble"]["metrics"]
    print(
        f"AUC {overall['auc']:.3f}  accuracy {overall['accuracy']:.3f}  sensitivity {overall['sensitivity']:.3f}  "
        f"specificity {overall['specificity']:.3f}  macro-F1 {overall['macro_f1']:.3f}"
    )
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from napari_covid_attention.batch import count_failed, count_push_failed, diagnose_many

    progress, close = _tqdm_progress("diagnosing")
    try:
        table = diagnose_many(
            args.inputs, args.out, bundle=args.bundle, device=args.device, write_maps=not args.no_maps,
            progress=progress, overwrite=args.overwrite, push=args.push, report=args.report,
        )
    finally:
        close()
    print(f"results: {table}")
    failed, total = count_failed(table)
    if failed:
        print(f"error: {failed} of {total} scans could not be diagnosed; see the error column of {table}.", file=sys.stderr)
        return 2
    not_pushed = count_push_failed(table) if args.push else 0
    if not_pushed:
        print(
            f"error: the SEG and SR of {not_pushed} of {total} scans were not stored on the PACS (they are in --out); "
            f"see the push column of {table}.",
            file=sys.stderr,
        )
        return 2
    return 0


def _cmd_pacs(args: argparse.Namespace) -> int:
    from napari_covid_attention.pacs import PacsClient, parse_study_url
    from napari_covid_attention.pacs.urls import split_credentials

    base, study = parse_study_url(args.url)
    study = args.study or study
    with PacsClient(base, credentials=split_credentials(args.url)[1]) as client:
        if study:
            found = client.search_series(study, modality=args.modality, limit=args.limit)
            rows = [
                ("" if s.series_number is None else str(s.series_number), s.modality, _count(s.n_instances), s.description[:48], s.url)
                for s in found
            ]
            _print_table(("SERIES", "MODALITY", "IMAGES", "DESCRIPTION", "URL (for diagnose)"), rows)
            print(f"{len(rows)} series in study {study}")
        else:
            found = client.search_studies(
                patient_id=args.patient_id, date=args.date, modality=args.modality,
                accession_number=args.accession, limit=args.limit,
            )
            rows = [
                (_date(s.study_date), s.patient_id, s.accession_number, "/".join(s.modalities), _count(s.n_series),
                 _count(s.n_instances), s.description[:48], s.study_uid)
                for s in found
            ]
            _print_table(("DATE", "PATIENT ID", "ACCESSION", "MODALITIES", "SERIES", "IMAGES", "DESCRIPTION", "STUDY UID"), rows)
            print(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'}" + (f" (the first {args.limit})" if len(rows) >= args.limit else "")
                  + "; list one's series with --study UID")
    return 0


def _count(value: int | None) -> str:
    return "" if value is None else str(value)


def _date(text: str) -> str:
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell; control characters a server sent are dropped
    (they could move the cursor or recolour the terminal)."""
    clean = [["".join(c for c in str(cell) if c.isprintable()) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in clean]) for i, h in enumerate(headers)]
    for row in [list(headers), *clean]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _cmd_finetune(args: argparse.Namespace) -> int:
    from napari_covid_attention.training.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(**_given(args, FINETUNE))
    result = _drive(finetune(config))
    print(("promoted: " if result.promoted else "not promoted: ") + result.reason)
    print(f"new version {result.version} (parent {result.parent_version}): {result.bundle_path}")
    for note in result.skipped:
        print(f"skipped {note}")
    return 0


def _cmd_bundles(args: argparse.Namespace) -> int:
    from napari_covid_attention.models.registry import broken_bundles, list_bundles, rollback

    if args.rollback:
        path = rollback(args.rollback)
        print(f"current {args.rollback}: {path}")
    for info in list_bundles():
        parent = f" <- {info.parent['version']}" if info.parent else ""
        print(f"{info.title}{parent}  [{info.path}]")
    for broken in broken_bundles():
        print(f"broken  [{broken.path}]: {broken.reason}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from napari_covid_attention.training.public_datasets import describe_import, import_dataset

    progress, close = _tqdm_progress("importing")
    try:
        manifest = import_dataset(
            args.layout, args.source, args.out, label=args.label, overwrite=args.overwrite,
            convert_windowed=args.convert_windowed, progress=progress,
        )
    finally:
        close()
    print(describe_import(manifest))
    print(f"manifest: {manifest}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import json

    from napari_covid_attention._demo import finding_line, run_demo

    summary = run_demo(label=args.label, headless=args.headless, out_dir=args.out, bundle=args.bundle)
    if summary is not None:
        print(finding_line(json.loads(summary.read_text())["diagnosis"]))
        print(f"summary: {summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-covid-attention",
        description="COVID-19 vs community-acquired pneumonia on chest CT with a dual-sampling "
        "attention network.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="open napari on the built-in sample CT (or write screenshots with --headless)"
    )
    demo.add_argument("--headless", action="store_true", help="no window: write PNG + JSON summary")
    demo.add_argument("--label", choices=("COVID-19", "CAP"), default="COVID-19", help="which sample phantom")
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for --headless output")
    demo.add_argument("--bundle", default=None, help="bundle folder or name (default: the built-in demo)")
    demo.set_defaults(func=_cmd_demo)

    diag = sub.add_parser(
        "diagnose",
        help="diagnose scans (files, DICOM folders, DICOMweb series URLs or a CSV of them) and write results",
        description="Every input gets a row in --out/results.csv (status ok or error, with the reason); the table "
        "is rewritten after each scan. Exit code 0 when every scan was diagnosed, 2 when any failed or the "
        "inputs or --out are unusable. --out must not be a symbolic link, nor a DICOM input's folder.",
    )
    diag.add_argument(
        "inputs", nargs="+",
        help="NIfTI files, DICOM folders/files, DICOMweb series URLs (http(s)://HOST/.../studies/<UID>/series/<UID>), "
        "or CSV files with an 'image' column of any of these",
    )
    diag.add_argument("--out", type=Path, default=Path("diagnosis-output"), help="output folder (never beside the inputs)")
    diag.add_argument("--bundle", default=None, help="bundle folder or name (default: the built-in demo)")
    diag.add_argument("--device", default="auto", help="auto, cpu, cuda:N or mps")
    diag.add_argument("--no-maps", action="store_true", help="write only the results CSV: no NIfTI maps and masks, no SEG/SR unless --push")
    diag.add_argument("--overwrite", action="store_true", help="replace an earlier run's results.csv (and same-named scan folders) in --out")
    diag.add_argument("--report", action="store_true", help="also a one-page report.png + report.pdf per scan (finding, numbers, key images)")
    diag.add_argument(
        "--push", action="store_true",
        help="store each PACS series' DICOM-SEG and SR back into its study on the same server (STOW-RS); "
        "DICOM inputs get diagnosis.seg.dcm and diagnosis.sr.dcm in --out either way",
    )
    diag.set_defaults(func=_cmd_diagnose)

    pacs = sub.add_parser(
        "pacs",
        help="list the studies on a DICOMweb server (PACS), or the series of one study, with their URLs",
        description="Credentials: COVID_ATTENTION_PACS_USER and COVID_ATTENTION_PACS_PASSWORD, or "
        "COVID_ATTENTION_PACS_TOKEN, or ~/.netrc; COVID_ATTENTION_PACS_CA_BUNDLE for a private CA. "
        "Pass a series' URL to 'diagnose'.",
    )
    pacs.add_argument("url", help="DICOMweb service root, e.g. http://127.0.0.1:8042/dicom-web (or .../studies/<UID>)")
    pacs.add_argument("--patient-id", default=None, help="studies of this PatientID")
    pacs.add_argument("--modality", default=None, help="e.g. CT: studies holding it, or series of it")
    pacs.add_argument("--date", default=None, metavar="YYYYMMDD[-YYYYMMDD]", help="study date or range (either end may be left open)")
    pacs.add_argument("--accession", default=None, help="studies with this AccessionNumber")
    pacs.add_argument("--study", default=None, metavar="UID", help="list the series of this StudyInstanceUID")
    pacs.add_argument("--limit", type=int, default=200, help="at most this many rows")
    pacs.set_defaults(func=_cmd_pacs)

    train = sub.add_parser("train", help="train a bundle (dual sampling, attention loss, segmenter, ensemble)")
    _option(train, "--train", type=Path, required=True, source=TRAIN, field="train_manifest", help="training manifest CSV")
    _option(train, "--val", type=Path, source=TRAIN, field="val_manifest", help="validation manifest (default: hold out --val-fraction)")
    _option(train, "--val-fraction", type=float, source=TRAIN)
    _option(train, "--out", type=Path, required=True, source=TRAIN, help="new bundle folder (must not exist)")
    train.add_argument("--folds", type=int, default=None, help="k-fold cross-validation: k bundles + cv.json in --out")
    _option(train, "--fold-by", metavar="COLUMN", source=TRAIN, help="keep each value of this manifest column (e.g. patient) in one fold; folds = values gives leave-one-out")
    train.add_argument("--data-sources", type=Path, default=None, help="JSON list of the data's sources ({name, kind: synthetic|real, licence, citation}) for the bundle's provenance")
    _option(train, "--name", source=TRAIN)
    _option(train, "--version", source=TRAIN)
    _option(train, "--label", source=TRAIN, help="note shown with every result")
    train.add_argument("--demo", action="store_true", help="label the bundle as the synthetic-data demo model")
    _option(train, "--sampling", choices=("uniform", "size_balanced", "dual"), source=TRAIN)
    _option(train, "--q", type=float, source=TRAIN, help="size-balanced exponent: p_j ~ n_j^q (0 = groups equal)")
    _option(train, "--loss", choices=("ce", "class_balanced"), source=LOSS, field="classification")
    _option(train, "--attention-weight", type=float, source=LOSS, help="lambda of the attention loss")
    _option(train, "--attention-loss", choices=("mse", "dice"), source=LOSS, field="attention_kind")
    _option(train, "--lesion-head", flag=True, source=CLASSIFIER, help="also predict the five lesion types")
    _option(train, "--attention-gain", type=float, source=CLASSIFIER, help="pooling weight of attended locations: mean(F * (1 + gain * A))")
    _option(train, "--intensity-augment", flag=True, source=TRAIN, help="also jitter intensities (HU are calibrated: off by default)")
    _option(train, "--classifier-shape", type=int, nargs=3, metavar=("Z", "Y", "X"), source=PREPROCESS)
    _option(train, "--segmenter-spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), source=PREPROCESS, field="segmenter_spacing_mm", help="segmenter voxel size in mm")
    _option(train, "--segmenter-roi", type=int, nargs=3, metavar=("Z", "Y", "X"), source=PREPROCESS, help="the segmenter's window (training and inference)")
    _option(train, "--layers", type=int, nargs=4, source=CLASSIFIER, help="ResNet blocks per stage (3 4 6 3 = ResNet-34)")
    _option(train, "--widths", type=int, nargs=4, source=CLASSIFIER, help="channels per stage")
    _option(train, "--segmenter-channels", type=int, nargs="+", source=SEGMENTER, field="channels")
    _option(train, "--init", type=Path, source=TRAIN, field="init_bundle", help="warm start: continue from this bundle's weights (same architecture)")
    _option(train, "--epochs", type=int, source=TRAIN)
    _option(train, "--segmenter-epochs", type=int, source=TRAIN)
    _option(train, "--batch-size", type=int, source=TRAIN)
    _option(train, "--lr", type=float, source=TRAIN, help="classifiers' peak learning rate (one-cycle schedule)")
    _option(train, "--segmenter-lr", type=float, source=TRAIN, help="segmenter's peak learning rate (lower it for warm starts)")
    _option(train, "--segmenter-negative-weight", type=float, source=TRAIN, help="draw scans without infection this many times as often in segmenter training")
    _option(train, "--seed", type=int, source=TRAIN)
    _option(train, "--device", source=TRAIN)
    # The choices are models.device.PRECISIONS (not imported: building the parser loads no torch).
    _option(train, "--precision", choices=("auto", "fp32", "bf16"), source=TRAIN, help="training steps' autocast: auto = mixed on CUDA, fp32 elsewhere; bf16 is ~4x faster on CPUs with AMX")
    _option(train, "--workers", type=int, source=TRAIN, help="preprocessing processes")
    _option(train, "--cache-dir", type=Path, source=TRAIN, help="preprocessing cache (default: beside --out)")
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a bundle on a manifest: metrics, ROC, ablation, localization")
    evaluate.add_argument("--manifest", type=Path, required=True)
    evaluate.add_argument("--out", type=Path, required=True, help="report folder")
    evaluate.add_argument("--bundle", default=None, help="bundle folder or name (default: the built-in demo)")
    _option(evaluate, "--device", source=EVALUATE)
    _option(evaluate, "--bootstrap", type=int, source=EVALUATE, field="n_bootstrap", help="bootstrap resamples for the 95%% CIs")
    evaluate.set_defaults(func=_cmd_evaluate)

    ft = sub.add_parser("finetune", help="fine-tune the current bundle from reviewed corrections; promote only if not worse")
    _option(ft, "--store", type=Path, source=FINETUNE, field="store_root", help="annotation store folder (default: the user data folder's)")
    _option(ft, "--bundle", source=FINETUNE, help="bundle to start from (default: the demo's current version)")
    _option(ft, "--segmenter-epochs", type=int, source=FINETUNE)
    _option(ft, "--classifier-epochs", type=int, source=FINETUNE)
    _option(ft, "--val-fraction", type=float, source=FINETUNE, help="share of reviewed cases held out to decide promotion")
    _option(ft, "--device", source=FINETUNE)
    _option(ft, "--seed", type=int, source=FINETUNE)
    ft.set_defaults(func=_cmd_finetune)

    bundles = sub.add_parser("bundles", help="list model bundles and versions; roll back a fine-tuned one")
    bundles.add_argument("--rollback", metavar="NAME", help="make the current version's parent current again")
    bundles.set_defaults(func=_cmd_bundles)

    from napari_covid_attention.training.public_datasets import LAYOUTS

    layouts = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
    imp = sub.add_parser("import-dataset", help="turn a public dataset folder into a training manifest", description=f"Layouts: {layouts}")
    imp.add_argument("layout", choices=("auto", *LAYOUTS), help="dataset layout, or auto to detect it")
    imp.add_argument("source", type=Path, help="the dataset folder as downloaded (never written to)")
    imp.add_argument("--out", type=Path, required=True, help="folder for manifest.csv and any converted files")
    imp.add_argument("--label", choices=("COVID-19", "CAP"), default=None, help="class of every scan (layout 'folder' only)")
    imp.add_argument("--convert-windowed", action="store_true", help="convert 0-255 windowed volumes back to approximate HU")
    imp.add_argument("--overwrite", action="store_true", help="replace an earlier import in --out")
    imp.set_defaults(func=_cmd_import)

    synth = sub.add_parser("synth", help="write a synthetic chest CT dataset (NIfTI + manifest.csv)")
    synth.add_argument("--n", type=int, required=True, help="number of scans")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    _option(synth, "--seed", type=int, source=SYNTH, help="dataset seed (different seeds never share cases)")
    _option(synth, "--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), source=SYNTH)
    synth.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    synth.set_defaults(func=_cmd_synth)

    ins = sub.add_parser("insert-lesions", help="insert synthetic COVID-19/CAP lesions into real chest CT without pneumonia (NIfTI + manifest.csv)")
    ins.add_argument("hosts", nargs="+", type=Path, help="real chest CT without pneumonia: NIfTI files or DICOM folders")
    ins.add_argument("--out", type=Path, required=True, help="new output folder")
    ins.add_argument("--n-per-host", type=int, default=20, help="cases per host")
    _option(ins, "--healthy-share", type=float, source=INSERT, help="share of each host's cases left without lesions ('no pneumonia')")
    ins.add_argument("--annotations", type=Path, default=None, help="folder with lidc-xml/<name>.xml or <name>-boxes/: nodules/tumour lesions must avoid")
    _option(ins, "--seed", type=int, source=INSERT, help="dataset seed")
    ins.set_defaults(func=_cmd_insert_lesions)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # recorded in bundle provenance
    try:
        return int(args.func(args))
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
