"""Evaluate a bundle on a manifest: the paper's metrics, size-bin ablation, localization.

Every scan goes through :func:`diagnose` (the product's own path, not a shortcut), so the
report measures what a user gets. Outputs: ``report.json``, ``report.md``, ``roc.png``
and ``cases.csv`` in the output folder.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_covid_attention.classes import NO_PNEUMONIA
from napari_covid_attention.diagnosis import MAP_NAMES, diagnose
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.jobs import Job, Progress
from napari_covid_attention.models.bundle import Bundle
from napari_covid_attention.training.datasets import NO_PNEUMONIA_LABEL, Case, read_manifest
from napari_covid_attention.training.metrics import (
    METRIC_NAMES,
    SLICE_MIN_AREA_MM2,
    binary_metrics,
    bootstrap_ci,
    dice,
    plot_roc,
    roc_curve,
    slice_detection_counts,
)
from napari_covid_attention.training.sampling import DEFAULT_SIZE_BIN_EDGES

ENSEMBLE = "ensemble"


@dataclass
class CaseResult:
    image: str
    label: int
    infection_fraction: float  # reference infection / lung volume (NaN without a mask)
    prob_covid: dict[str, float]  # "ensemble" and each member
    infection_dice: float
    localization: dict[str, dict | None] = field(default_factory=dict)
    seconds: float = 0.0
    infection_percent: float = 0.0  # predicted infection / lung volume, %
    pneumonia_detected: bool = False
    slices: dict[str, int] = field(default_factory=dict)  # slice_detection_counts against the reference

    @property
    def has_pneumonia(self) -> bool:
        return self.label != NO_PNEUMONIA_LABEL


def evaluate_bundle(
    bundle: Bundle,
    manifest: str | Path,
    out_dir: str | Path,
    *,
    device: str = "auto",
    size_bin_edges: Sequence[float] = DEFAULT_SIZE_BIN_EDGES,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Job[dict]:
    """Diagnose every case (yields ``Progress("evaluate", done, n)``), write the report, return it as a dict."""
    cases = read_manifest(manifest, bundle.class_names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, case in enumerate(cases):
        results.append(_evaluate_case(case, bundle, device, Path(manifest).parent))
        yield Progress("evaluate", i + 1, len(cases))
    report = build_report(results, bundle, size_bin_edges, n_bootstrap, seed)
    report["manifest"] = str(manifest)
    _write_outputs(report, results, out, bundle)
    return report


def _evaluate_case(case: Case, bundle: Bundle, device: str, base: Path) -> CaseResult:
    started = time.perf_counter()
    volume = load_ct(case.image)
    result = diagnose(volume, bundle, device)
    probs = {ENSEMBLE: result.probabilities[bundle.class_names[0]]}
    probs.update({m.name: m.probabilities[bundle.class_names[0]] for m in result.members})
    fraction, case_dice, localization, slices = float("nan"), float("nan"), {}, {}
    if case.infection_mask is not None:
        reference = load_ct(case.infection_mask).hu > 0
        lungs = load_ct(case.lung_mask).hu > 0 if case.lung_mask is not None else result.lung_mask > 0
        fraction = float(reference.sum() / max(lungs.sum(), 1))
        predicted = result.infection_mask > 0
        case_dice = dice(reference, predicted)
        slices = slice_detection_counts(reference, predicted, volume.spacing_mm[1] * volume.spacing_mm[2])
        if reference.any():
            localization = {k: (None if v is None else v.to_dict()) for k, v in result.localization(reference).items()}
    return CaseResult(
        image=str(Path(case.image).relative_to(base.resolve())) if Path(case.image).is_relative_to(base.resolve()) else str(case.image),
        label=case.label,
        infection_fraction=fraction,
        prob_covid=probs,
        infection_dice=case_dice,
        localization=localization,
        seconds=time.perf_counter() - started,
        infection_percent=result.infection_percent,
        pneumonia_detected=result.pneumonia_detected,
        slices=slices,
    )


def build_report(
    all_results: Sequence[CaseResult], bundle: Bundle, edges: Sequence[float], n_bootstrap: int, seed: int
) -> dict:
    """COVID-19 vs CAP on the cases with pneumonia; pneumonia or not and segmentation on all."""
    results = [r for r in all_results if r.has_pneumonia]
    labels = np.array([r.label for r in results])
    fractions = np.array([r.infection_fraction for r in results])
    models = [ENSEMBLE, *[m.name for m in bundle.members]]
    overall = {}
    for name in models:
        prob = np.array([r.prob_covid[name] for r in results])
        overall[name] = {
            "metrics": binary_metrics(prob, labels),
            "ci95": bootstrap_ci(binary_metrics, prob, labels, n_bootstrap, seed) if n_bootstrap else {},
        }
    return {
        "bundle": bundle.title,
        "bundle_label": bundle.label,
        "n_cases": len(all_results),
        "n_without_pneumonia": len(all_results) - len(results),
        "n_covid": int(np.sum(labels == 0)),
        "n_cap": int(np.sum(labels == 1)),
        "overall": overall,
        "by_size_bin": _by_size_bin(results, models, labels, fractions, edges),
        "ablation": _ablation(results, models, labels, fractions, edges),
        "localization": _localization_summary(results),
        "infection_dice": _mean_sd([r.infection_dice for r in all_results if r.infection_fraction > 0]),
        "pneumonia": _pneumonia_summary(all_results, bundle),
        "seconds_per_case": _mean_sd([r.seconds for r in all_results]),
    }


def _pneumonia_summary(results: Sequence[CaseResult], bundle: Bundle) -> dict:
    """Pneumonia or not per scan (the bundle's rule), and infected slices found (pooled)."""
    sick = np.array([r.has_pneumonia for r in results])
    detected = np.array([r.pneumonia_detected for r in results])
    healthy_percent = [r.infection_percent for r, s in zip(results, sick, strict=True) if not s]
    totals = {k: sum(r.slices.get(k, 0) for r in results) for k in ("tp", "fn", "fp", "tn")}
    return {
        "rule_min_infection_percent": bundle.pneumonia.min_infection_percent,
        "n_with": int(sick.sum()),
        "n_without": int((~sick).sum()),
        "sensitivity": float(np.mean(detected[sick])) if sick.any() else float("nan"),
        "specificity": float(np.mean(~detected[~sick])) if (~sick).any() else float("nan"),
        "infection_percent_without_pneumonia": {"max": max(healthy_percent, default=float("nan")), **_mean_sd(healthy_percent)},
        "slices": {
            **totals,
            "sensitivity": totals["tp"] / (totals["tp"] + totals["fn"]) if totals["tp"] + totals["fn"] else float("nan"),
            "specificity": totals["tn"] / (totals["tn"] + totals["fp"]) if totals["tn"] + totals["fp"] else float("nan"),
            "min_area_mm2": SLICE_MIN_AREA_MM2,
        },
    }


def _by_size_bin(results, models, labels, fractions, edges) -> list[dict]:
    bounds = [0.0, *edges, 1.0]
    rows = []
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        inside = (fractions >= low) & (fractions < high)
        if not inside.any():
            continue
        row = {"infection_fraction": [low, high], "n_covid": int(np.sum(inside & (labels == 0))), "n_cap": int(np.sum(inside & (labels == 1)))}
        for name in models:
            prob = np.array([r.prob_covid[name] for r in results])[inside]
            row[name] = binary_metrics(prob, labels[inside])
        rows.append(row)
    return rows


def _ablation(results, models, labels, fractions, edges) -> dict:
    """The paper's point: size-balanced sampling helps the rare groups.

    Small-infection COVID-19 (below the second bin edge) and large-infection CAP (at or
    above the last edge); accuracy within a one-class subset is its recall, so it moves
    with a model's calibration. The AUC on the two groups pooled does not: it asks
    whether a small COVID-19 infection scores above a large CAP one, at any threshold.
    """
    small_covid = (labels == 0) & (fractions < edges[min(1, len(edges) - 1)])
    large_cap = (labels == 1) & (fractions >= edges[-1])
    rare = small_covid | large_cap
    table = {}
    for name in models:
        prob = np.array([r.prob_covid[name] for r in results])
        overall = binary_metrics(prob, labels)
        table[name] = {
            "small_infection_covid_accuracy": float(np.mean(prob[small_covid] >= 0.5)) if small_covid.any() else float("nan"),
            "large_infection_cap_accuracy": float(np.mean(prob[large_cap] < 0.5)) if large_cap.any() else float("nan"),
            "rare_groups_auc": binary_metrics(prob[rare], labels[rare])["auc"] if rare.any() else float("nan"),
            "auc": overall["auc"],
            "accuracy": overall["accuracy"],
        }
    return {"n_small_infection_covid": int(small_covid.sum()), "n_large_infection_cap": int(large_cap.sum()), "models": table}


def _localization_summary(results) -> dict:
    summary = {}
    for name in MAP_NAMES:
        scores = [r.localization.get(name) for r in results if r.localization.get(name)]
        if not scores:
            continue
        summary[name] = {
            "n_cases": len(scores),
            "energy_inside": _mean_sd([s["energy_inside"] for s in scores]),
            "pointing_game": float(np.mean([s["pointing_game"] for s in scores])),
            "map_auc": _mean_sd([s["map_auc"] for s in scores]),
        }
    if "attention" in summary and "gradcam" in summary:
        summary["attention_over_gradcam_energy"] = summary["attention"]["energy_inside"]["mean"] / max(summary["gradcam"]["energy_inside"]["mean"], 1e-12)
    return summary


def _mean_sd(values) -> dict[str, float]:
    arr = np.array([v for v in values if v is not None and not np.isnan(v)], dtype=float)
    if arr.size == 0:
        return {"mean": float("nan"), "sd": float("nan")}
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


def _write_outputs(report: dict, all_results: Sequence[CaseResult], out: Path, bundle: Bundle) -> None:
    results = [r for r in all_results if r.has_pneumonia]
    labels = np.array([r.label for r in results])
    curves = {}
    for name in report["overall"]:
        prob = np.array([r.prob_covid[name] for r in results])
        fpr, tpr = roc_curve(prob, labels == 0)
        curves[name] = (fpr, tpr, report["overall"][name]["metrics"]["auc"])
    plot_roc(curves, out / "roc.png", f"{bundle.title}: COVID-19 vs CAP (n={len(results)})")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    with open(out / "cases.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        models = list(report["overall"])
        writer.writerow(["image", "label", "infection_fraction", *[f"p_covid_{m}" for m in models], "infection_dice", "predicted_infection_percent", "pneumonia_detected", *[f"energy_inside_{m}" for m in MAP_NAMES]])
        for r in all_results:
            energies = [(r.localization.get(m) or {}).get("energy_inside", "") for m in MAP_NAMES]
            label = bundle.class_names[r.label] if r.has_pneumonia else NO_PNEUMONIA
            writer.writerow([r.image, label, f"{r.infection_fraction:.5f}", *[f"{r.prob_covid[m]:.5f}" for m in models], f"{r.infection_dice:.4f}", f"{r.infection_percent:.3f}", int(r.pneumonia_detected), *energies])


def render_markdown(report: dict) -> str:
    """The report as Markdown tables (what docs/ shows)."""
    lines = [
        f"# Evaluation of {report['bundle']}",
        "",
        f"*{report['bundle_label']}*" if report.get("bundle_label") else "",
        "",
        f"{report['n_cases']} scans ({report['n_covid']} COVID-19, {report['n_cap']} CAP, {report.get('n_without_pneumonia', 0)} without pneumonia); COVID-19 vs CAP on the scans with pneumonia, COVID-19 the positive class; 95 % bootstrap CIs.",
        "",
        "| model | " + " | ".join(METRIC_NAMES) + " |",
        "|---|" + "---|" * len(METRIC_NAMES),
    ]
    for name, block in report["overall"].items():
        cells = []
        for metric in METRIC_NAMES:
            value = block["metrics"][metric]
            ci = block["ci95"].get(metric)
            cells.append(f"{value:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ablation = report["ablation"]
    lines += [
        "",
        "## Dual sampling ablation",
        "",
        f"Rare groups: small-infection COVID-19 (n={ablation['n_small_infection_covid']}) and large-infection CAP (n={ablation['n_large_infection_cap']}).",
        "",
        "| model | small-infection COVID-19 acc. | large-infection CAP acc. | AUC on these two groups | AUC (all) | accuracy (all) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in ablation["models"].items():
        lines.append(
            f"| {name} | {row['small_infection_covid_accuracy']:.3f} | {row['large_infection_cap_accuracy']:.3f} "
            f"| {row['rare_groups_auc']:.3f} | {row['auc']:.3f} | {row['accuracy']:.3f} |"
        )
    lines += ["", "## By infection size", "", "| infection fraction | COVID-19 | CAP | ensemble accuracy | ensemble AUC |", "|---|---|---|---|---|"]
    for row in report["by_size_bin"]:
        low, high = row["infection_fraction"]
        m = row[ENSEMBLE]
        lines.append(f"| {100 * low:.0f}–{100 * high:.0f} % | {row['n_covid']} | {row['n_cap']} | {m['accuracy']:.3f} | {m['auc']:.3f} |")
    loc = report["localization"]
    if loc:
        lines += ["", "## Localization of the maps against the infection mask", "", "| map | energy inside mask | pointing game | map AUC |", "|---|---|---|---|"]
        for name in MAP_NAMES:
            if name in loc:
                s = loc[name]
                lines.append(
                    f"| {name} | {s['energy_inside']['mean']:.3f} ± {s['energy_inside']['sd']:.3f} | {s['pointing_game']:.3f} | {s['map_auc']['mean']:.3f} ± {s['map_auc']['sd']:.3f} |"
                )
        if "attention_over_gradcam_energy" in loc:
            lines += ["", f"Attention / Grad-CAM energy inside the mask: **{loc['attention_over_gradcam_energy']:.2f}×**."]
    p = report.get("pneumonia")
    if p:
        sl = p["slices"]
        healthy = p["infection_percent_without_pneumonia"]
        lines += [
            "",
            "## Pneumonia or not",
            "",
            f"Rule: pneumonia when the infection covers at least {p['rule_min_infection_percent']:.2f} % of the lungs.",
            "",
            "| scans with pneumonia | sensitivity | scans without | specificity | infection % without pneumonia (max) | infected slices found | clean slices left clean |",
            "|---|---|---|---|---|---|---|",
            f"| {p['n_with']} | {p['sensitivity']:.3f} | {p['n_without']} | {p['specificity']:.3f} | {healthy['max']:.2f} | {sl['sensitivity']:.3f} ({sl['tp']}/{sl['tp'] + sl['fn']}) | {sl['specificity']:.3f} ({sl['tn']}/{sl['tn'] + sl['fp']}) |",
        ]
    dice_scores = report["infection_dice"]
    lines += [
        "",
        f"Infection segmentation Dice (scans with infection): {dice_scores['mean']:.3f} ± {dice_scores['sd']:.3f}. "
        f"Time per scan (full diagnosis): {report['seconds_per_case']['mean']:.2f} s.",
        "",
    ]
    return "\n".join(lines)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
