"""The result card's text (Qt-free: plain HTML a QLabel shows, and tests read)."""

from __future__ import annotations

from html import escape

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


def result_card_html(d: Diagnosis) -> str:
    """P(COVID-19) vs P(CAP), each member, lesion types, infection burden, model, timings."""
    names = d.class_names
    head = " vs ".join(f"P({escape(n)}) <b>{percent(d.probabilities[n])}</b>" for n in names)
    lines = [f"<p style='font-size:13pt'>{head}</p>", f"<p>Most likely: <b>{escape(d.predicted_class)}</b></p>"]
    members = "".join(
        f"<li>{escape(m.name.replace('_', '-'))} (weight {m.weight:.2f}): "
        + ", ".join(f"{escape(n)} {percent(m.probabilities[n])}" for n in names)
        + "</li>"
        for m in d.members
    )
    lines.append(f"<p>Ensemble members:</p><ul>{members}</ul>")
    if d.lesion_probabilities:
        lesions = ", ".join(
            f"{LESION_TITLES.get(k, k)} {percent(v)}" for k, v in sorted(d.lesion_probabilities.items(), key=lambda kv: -kv[1])
        )
        lines.append(f"<p>Lesion types: {lesions}</p>")
    lines.append(
        f"<p>Infection <b>{d.infection_volume_ml:.1f} mL</b> = <b>{d.infection_percent:.1f} %</b> of "
        f"{d.lung_volume_ml:.0f} mL lung</p>"
    )
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
