"""The result card's text (Qt-free: plain HTML a QLabel shows, and tests read)."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch: the dock must open without it
    from napari_covid_attention.diagnosis import Diagnosis
    from napari_covid_attention.explain.localization import LocalizationScores

LESION_TITLES = {
    "ground_glass": "ground-glass opacity",
    "consolidation": "consolidation",
    "crazy_paving": "crazy paving",
    "air_bronchogram": "air bronchogram",
    "septal_thickening": "septal thickening",
}


def percent(p: float) -> str:
    return f"{100.0 * p:.1f} %"


def percent_of_lungs(value: float) -> str:
    """An infection share of the lungs, e.g. "0.12 %", "3.4 %", "< 0.01 %"."""
    if 0.0 < value < 0.01:
        return "< 0.01 %"
    return f"{value:.3g} %"


def finding_html(d: Diagnosis) -> str:
    """The headline: pneumonia or not first; COVID-19 vs CAP only second when there is none."""
    names = d.class_names
    burden = percent_of_lungs(d.infection_percent)
    threshold = f"{d.pneumonia_rule.min_infection_percent:.3g} %"
    if not d.pneumonia_detected:
        classes = " vs ".join(f"{escape(n)} {percent(d.probabilities[n])}" for n in names)
        return (
            f"<p style='font-size:13pt'><b>{escape(d.finding)}</b></p>"
            f"<p>infection {burden} of the lungs, below the {threshold} threshold</p>"
            f"<p style='color:gray; font-size:small'>if this were pneumonia: {classes}</p>"
        )
    head = " vs ".join(f"P({escape(n)}) <b>{percent(d.probabilities[n])}</b>" for n in names)
    return (
        f"<p style='font-size:13pt'>Pneumonia detected — most likely <b>{escape(d.predicted_class)}</b></p>"
        f"<p>{head}</p>"
        f"<p>infection {burden} of the lungs (threshold {threshold})</p>"
    )


def result_card_html(d: Diagnosis) -> str:
    """Pneumonia or not, then P(COVID-19) vs P(CAP), each member, lesion types, infection
    burden, model, timings, warnings."""
    names = d.class_names
    lines = [finding_html(d)]
    members = "".join(
        f"<li>{escape(m.name.replace('_', '-'))} (weight {m.weight:.2f}): "
        + ", ".join(f"{escape(n)} {percent(m.probabilities[n])}" for n in names)
        + "</li>"
        for m in d.members
    )
    details = f"<p>Ensemble members:</p><ul>{members}</ul>"
    if d.lesion_probabilities:
        lesions = ", ".join(
            f"{LESION_TITLES.get(k, k)} {percent(v)}" for k, v in sorted(d.lesion_probabilities.items(), key=lambda kv: -kv[1])
        )
        details += f"<p>Lesion types: {lesions}</p>"
    # Without pneumonia, what the classifier says about its kind is secondary: greyed.
    lines.append(details if d.pneumonia_detected else f"<div style='color:gray'>{details}</div>")
    lines.append(f"<p>Infection <b>{d.infection_volume_ml:.1f} mL</b> of {d.lung_volume_ml:.0f} mL lung</p>")
    lines.append(f"<p>Model: {escape(d.bundle_name)} {escape(d.bundle_version)} on {escape(d.device)}</p>")
    if d.bundle_label:
        lines.append(f"<p style='color:#ff9933'><b>{escape(d.bundle_label)}</b></p>")
    timings = ", ".join(f"{escape(k)} {v:.2f} s" for k, v in d.timings_s.items() if k != "total")
    lines.append(f"<p style='color:gray'>Total {d.timings_s.get('total', 0):.2f} s ({timings})</p>")
    for warning in d.warnings:
        lines.append(f"<p style='color:#ff9933'>{escape(warning)}</p>")
    return "".join(lines)


def scores_rows(scores: dict[str, LocalizationScores | None]) -> list[tuple[str, str, str, str]]:
    """Table rows (map, energy inside mask, pointing game, map AUC) for the compare panel."""
    titles = {"attention": "attention", "gradcam": "Grad-CAM", "gradcam_pp": "Grad-CAM++"}
    rows = []
    for name, value in scores.items():
        if value is None:
            rows.append((titles.get(name, name), "–", "–", "–"))
        else:
            rows.append(
                (titles.get(name, name), f"{value.energy_inside:.2f}", "hit" if value.pointing_game else "miss", f"{value.map_auc:.2f}")
            )
    return rows
