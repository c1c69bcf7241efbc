"""The synthetic benchmark of a bundle whose classifiers are an earlier bundle's, re-calibrated.

    python scripts/recalibrated_benchmark.py --cases docs/demo-model/cases.csv \
        --old runs/demo/demo-1.3.0 --new src/napari_covid_attention/bundles/demo

A bundle trained with ``--epochs 0`` keeps its parent's classifier weights and refits only
each member's calibration and the ensemble weights. Its members' logits on a test set are
then the parent's, so their probabilities follow exactly from the parent's per-case
probabilities in ``cases.csv``: undo the old calibration (``logit(p) = s (l0 - l1) + b``)
and apply the new one. This gives the full held-out test set's AUC and dual-sampling
ablation without regenerating and re-diagnosing 500 phantoms; check it against a direct
``evaluate`` of a subset (the script prints both when ``--check`` names that report's
cases.csv).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from napari_covid_attention.training.evaluate import _ablation
from napari_covid_attention.training.metrics import METRIC_NAMES, binary_metrics
from napari_covid_attention.training.sampling import DEFAULT_SIZE_BIN_EDGES


def member_calibration(bundle: Path) -> dict[str, tuple[float, float, float]]:
    """(scale, logit-difference bias, ensemble weight) per member name."""
    meta = json.loads((bundle / "bundle.json").read_text())
    out = {}
    for m in meta["members"]:
        cal = m.get("calibration") or {}
        bias = cal.get("bias") or [0.0, 0.0]
        out[m["name"]] = (float(cal.get("scale", 1.0)), float(bias[0] - bias[1]), float(m["weight"]))
    return out


def recalibrate(p_old: np.ndarray, old: tuple[float, float, float], new: tuple[float, float, float]) -> np.ndarray:
    p = np.clip(p_old, 1e-6, 1 - 1e-6)
    difference = (np.log(p / (1 - p)) - old[1]) / old[0]
    return 1.0 / (1.0 + np.exp(-(new[0] * difference + new[1])))


def rescore(cases_csv: Path, old_bundle: Path, new_bundle: Path) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    rows = [r for r in csv.DictReader(open(cases_csv)) if r["label"] in ("COVID-19", "CAP")]
    labels = np.array([0 if r["label"] == "COVID-19" else 1 for r in rows])
    fractions = np.array([float(r["infection_fraction"]) for r in rows])
    old, new = member_calibration(old_bundle), member_calibration(new_bundle)
    probs = {name: recalibrate(np.array([float(r[f"p_covid_{name}"]) for r in rows]), old[name], new[name]) for name in new}
    probs = {"ensemble": sum(new[name][2] * probs[name] for name in new), **probs}
    return labels, probs, fractions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, required=True, help="the old bundle's evaluate cases.csv")
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--check", type=Path, default=None, help="cases.csv of the new bundle evaluated directly on a subset")
    args = parser.parse_args()
    labels, probs, fractions = rescore(args.cases, args.old, args.new)
    print(f"{len(labels)} scans; COVID-19 positive")
    print("| model | " + " | ".join(METRIC_NAMES) + " |")
    for name, p in probs.items():
        m = binary_metrics(p, labels)
        print(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in METRIC_NAMES) + " |")
    # The ablation exactly as evaluate defines it (rare groups, per-group accuracy, pooled AUC).
    cases = [SimpleNamespace(prob_covid={name: float(p[i]) for name, p in probs.items()}) for i in range(len(labels))]
    ablation = _ablation(cases, list(probs), labels, fractions, DEFAULT_SIZE_BIN_EDGES)
    print(f"ablation: small-infection COVID-19 n={ablation['n_small_infection_covid']}, large-infection CAP n={ablation['n_large_infection_cap']}")
    for name, row in ablation["models"].items():
        print(f"| {name} | {row['small_infection_covid_accuracy']:.3f} | {row['large_infection_cap_accuracy']:.3f} | {row['rare_groups_auc']:.3f} |")
    if args.check:
        direct = {r["image"].split("/")[-1]: float(r["p_covid_ensemble"]) for r in csv.DictReader(open(args.check)) if r["label"] in ("COVID-19", "CAP")}
        rows = [r for r in csv.DictReader(open(args.cases)) if r["label"] in ("COVID-19", "CAP")]
        pairs = [(probs["ensemble"][i], direct[Path(r["image"]).name]) for i, r in enumerate(rows) if r["image"].startswith("test/") and Path(r["image"]).name in direct]
        if pairs:
            a, b = np.array(pairs).T
            print(f"check on {len(pairs)} scans evaluated directly: max |recomputed - direct| P(COVID-19) = {np.max(np.abs(a - b)):.4f}")


if __name__ == "__main__":
    main()
