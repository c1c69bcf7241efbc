"""The demo bundle on real chest CT: the real scans as they are, and leave-one-patient-out.

    python scripts/real_scan_report.py --bundle BUNDLE --shared ../shared/data --out docs/real-scans \
        [--lopo runs/demo/lopo] [--baseline OLD_BUNDLE]

1. Every real scan of ``--shared`` (none has pneumonia) is diagnosed with ``--bundle``
   (and ``--baseline``, for the before/after table): finding, infection % of the lungs,
   lung volume, P(COVID-19), warnings, seconds.
2. With ``--lopo`` (a ``train --folds N --fold-by patient`` folder whose folds were
   evaluated on their ``test.csv`` into ``fold-i/report``): per held-out patient and pooled,
   infection Dice, infected slices found / clean slices left clean, scans with and without
   pneumonia told apart, and COVID-19-like vs CAP-like AUC (pooled over the folds' scans).

Writes ``report.json`` and ``report.md`` in ``--out``. Numbers only come from here.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_covid_attention.classes import NO_PNEUMONIA
from napari_covid_attention.diagnosis import diagnose
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.models.bundle import load_bundle
from napari_covid_attention.training.metrics import binary_metrics


def real_scans(shared: Path) -> list[Path]:
    return [*sorted((shared / "real-chest-ct").glob("*.nii.gz")), shared / "chest-ct-dicom-lung-pet-ct-dx"]


def diagnose_real(bundle_path: Path, scans: list[Path]) -> list[dict]:
    bundle = load_bundle(bundle_path)
    rows = []
    for scan in scans:
        volume = load_ct(scan)
        started = time.perf_counter()
        d = diagnose(volume, bundle, "cpu")
        rows.append(
            {
                "scan": scan.name,
                "bundle": bundle.title,
                "finding": d.finding,
                "infection_percent": round(d.infection_percent, 3),
                "infection_ml": round(d.infection_volume_ml, 1),
                "lung_ml": round(d.lung_volume_ml, 0),
                "p_covid": round(d.probabilities[bundle.class_names[0]], 3),
                "threshold_percent": d.pneumonia_rule.min_infection_percent,
                "warnings": d.warnings,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        print(rows[-1])
    return rows


def lopo_summary(lopo: Path) -> dict:
    folds, cases = [], []
    for fold_dir in sorted(lopo.glob("fold-*"), key=lambda p: int(p.name.split("-")[1])):
        report = json.loads((fold_dir / "report" / "report.json").read_text())
        patients = {r["patient"] for r in csv.DictReader(open(fold_dir / "test.csv"))}
        p = report["pneumonia"]
        folds.append(
            {
                "fold": fold_dir.name,
                "held_out_patient": ", ".join(sorted(patients)),
                "n_scans": report["n_cases"],
                "n_without_pneumonia": report["n_without_pneumonia"],
                "infection_dice": report["infection_dice"]["mean"],
                "slice_sensitivity": p["slices"]["sensitivity"],
                "slice_specificity": p["slices"]["specificity"],
                "slices": {k: p["slices"][k] for k in ("tp", "fn", "fp", "tn")},
                "pneumonia_sensitivity": p["sensitivity"],
                "pneumonia_specificity": p["specificity"],
                "max_infection_percent_without_pneumonia": p["infection_percent_without_pneumonia"]["max"],
                "threshold_percent": p["rule_min_infection_percent"],
                "covid_vs_cap_auc": report["overall"]["ensemble"]["metrics"]["auc"],
            }
        )
        cases += list(csv.DictReader(open(fold_dir / "report" / "cases.csv")))
    slices = {k: sum(f["slices"][k] for f in folds) for k in ("tp", "fn", "fp", "tn")}
    sick = [c for c in cases if c["label"] != NO_PNEUMONIA]
    healthy = [c for c in cases if c["label"] == NO_PNEUMONIA]
    dices = [float(c["infection_dice"]) for c in sick]
    labels = np.array([0 if c["label"] == "COVID-19" else 1 for c in sick])
    prob = np.array([float(c["p_covid_ensemble"]) for c in sick])
    return {
        "folds": folds,
        "pooled": {
            "n_scans": len(cases),
            "n_without_pneumonia": len(healthy),
            "infection_dice_mean": float(np.mean(dices)),
            "infection_dice_sd": float(np.std(dices, ddof=1)),
            "slices": slices,
            "slice_sensitivity": slices["tp"] / max(slices["tp"] + slices["fn"], 1),
            "slice_specificity": slices["tn"] / max(slices["tn"] + slices["fp"], 1),
            "pneumonia_sensitivity": float(np.mean([c["pneumonia_detected"] == "1" for c in sick])),
            "pneumonia_specificity": float(np.mean([c["pneumonia_detected"] == "0" for c in healthy])),
            "max_infection_percent_without_pneumonia": max(float(c["predicted_infection_percent"]) for c in healthy),
            "covid_vs_cap": binary_metrics(prob, labels),
        },
    }


def render(report: dict) -> str:
    lines = [f"# {report['bundle']} on real chest CT", "", f"Machine: {report['machine']}.", ""]
    lines += [
        "## The real scans of ../shared/data (none has pneumonia)",
        "",
        "| scan | bundle | finding | infection % of lungs | lung mL | P(COVID-19) | warnings |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["real_scans"]:
        warn = "; ".join(row["warnings"]) or "none"
        lines.append(
            f"| {row['scan']} | {row['bundle']} | {row['finding']} | {row['infection_percent']:.2f} | {row['lung_ml']:.0f} | {row['p_covid']:.2f} | {warn} |"
        )
    if "lopo" in report:
        lines += [
            "",
            "## Leave one patient out (lesions inserted into the held-out patient's scan)",
            "",
            "| held-out patient | scans (healthy) | infection Dice | infected slices found | clean slices kept clean | pneumonia found | healthy called healthy | max infection % when healthy | COVID-19 vs CAP AUC |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for f in report["lopo"]["folds"]:
            lines.append(
                f"| {f['held_out_patient']} | {f['n_scans']} ({f['n_without_pneumonia']}) | {f['infection_dice']:.3f} | {f['slice_sensitivity']:.3f} "
                f"| {f['slice_specificity']:.3f} | {f['pneumonia_sensitivity']:.2f} | {f['pneumonia_specificity']:.2f} "
                f"| {f['max_infection_percent_without_pneumonia']:.2f} | {f['covid_vs_cap_auc']:.3f} |"
            )
        p = report["lopo"]["pooled"]
        s = p["slices"]
        lines.append(
            f"| **pooled** | {p['n_scans']} ({p['n_without_pneumonia']}) | {p['infection_dice_mean']:.3f} ± {p['infection_dice_sd']:.3f} "
            f"| {p['slice_sensitivity']:.3f} ({s['tp']}/{s['tp'] + s['fn']}) | {p['slice_specificity']:.3f} ({s['tn']}/{s['tn'] + s['fp']}) "
            f"| {p['pneumonia_sensitivity']:.2f} | {p['pneumonia_specificity']:.2f} | {p['max_infection_percent_without_pneumonia']:.2f} "
            f"| {p['covid_vs_cap']['auc']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, default=None, help="an older bundle for the before/after table")
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--lopo", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    scans = real_scans(args.shared)
    rows = diagnose_real(args.bundle, scans)
    if args.baseline is not None:
        rows = diagnose_real(args.baseline, scans) + rows
    report = {
        "bundle": load_bundle(args.bundle).title,
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "real_scans": rows,
    }
    if args.lopo is not None:
        report["lopo"] = lopo_summary(args.lopo)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
