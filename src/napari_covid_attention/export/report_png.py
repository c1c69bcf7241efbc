"""One-page human-readable report (PNG and PDF) of a diagnosis, for people without a DICOM viewer.

It says what the SR says (finding, numbers, model) in words, marked "not for clinical
use", with key images of the most-infected axial slice: the CT with the lung and
infection masks, and the attention and Grad-CAM maps on the same slice. Drawn with
matplotlib's ``Figure`` directly (Agg, no pyplot state, no Qt).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from scipy import ndimage

from napari_covid_attention.atomic import atomic_path
from napari_covid_attention.io.volume import CTVolume
from napari_covid_attention.preprocess.lung import LEFT_LUNG, RIGHT_LUNG
from napari_covid_attention.windows import window_limits

NOT_FOR_CLINICAL_USE = "RESEARCH SOFTWARE - NOT FOR CLINICAL USE"
_PAGE_IN = (8.27, 11.69)  # A4 portrait
_DPI = 130
_RIGHT_RGB, _LEFT_RGB, _INFECTION_RGB = (0.25, 0.63, 1.0), (0.55, 0.4, 1.0), (1.0, 0.2, 0.1)


def key_slice(infection_mask: np.ndarray, lung_mask: np.ndarray) -> int:
    """Index z of the axial slice with the most infection (the most lung when there is none)."""
    per_slice = np.count_nonzero(infection_mask, axis=(1, 2))
    if not per_slice.any():
        per_slice = np.count_nonzero(lung_mask, axis=(1, 2))
    return int(np.argmax(per_slice))


def map_on_slice(values: np.ndarray, map_affine: np.ndarray, scan_affine: np.ndarray, z: int, shape_yx: tuple[int, int]) -> np.ndarray:
    """A coarse map sampled (linearly, in its own grid) at every pixel of scan slice ``z``."""
    ys, xs = np.mgrid[0 : shape_yx[0], 0 : shape_yx[1]]
    voxels = np.stack([np.full(ys.size, z), ys.ravel(), xs.ravel(), np.ones(ys.size)])
    index = (np.linalg.inv(map_affine) @ np.asarray(scan_affine, dtype=float) @ voxels)[:3]
    sampled = ndimage.map_coordinates(np.asarray(values, dtype=np.float32), index, order=1, mode="constant", cval=0.0)
    return sampled.reshape(shape_yx)


def write_report(
    volume: CTVolume,
    diagnosis,
    out_png: str | os.PathLike,
    *,
    annotator: str | None = None,
    mask_version: int | None = None,
    pdf: bool = True,
) -> list[Path]:
    """Write ``out_png`` (and the same page as ``.pdf`` beside it); returns the paths written.

    ``diagnosis``: a ``Diagnosis`` of ``volume`` (masks on its grid); for corrected masks pass
    ``export.sr.corrected(...)`` and the annotator / mask version to name them.
    """
    figure = report_figure(volume, diagnosis, annotator=annotator, mask_version=mask_version)
    out_png = Path(out_png)
    paths = [out_png] + ([out_png.with_suffix(".pdf")] if pdf else [])
    for path in paths:
        with atomic_path(path) as temp:
            figure.savefig(temp, dpi=_DPI, format=path.suffix[1:])
    return paths


def report_figure(volume: CTVolume, diagnosis, *, annotator: str | None = None, mask_version: int | None = None) -> Figure:
    """The report page as a matplotlib Figure."""
    figure = Figure(figsize=_PAGE_IN, facecolor="white")
    _header(figure, diagnosis)
    _numbers(figure, diagnosis, annotator, mask_version)
    _key_images(figure, volume, diagnosis)
    figure.text(
        0.5, 0.015,
        "Masks, maps and probabilities come from a research model and may be wrong. "
        "Attention and Grad-CAM show where the model looked, not where disease is.",
        ha="center", fontsize=7, color="0.35", wrap=True,
    )
    return figure


def _header(figure: Figure, diagnosis) -> None:
    figure.patches.append(_banner(figure))
    figure.text(0.5, 0.972, NOT_FOR_CLINICAL_USE, ha="center", va="center", fontsize=13, weight="bold", color="white")
    figure.text(0.06, 0.925, "COVID-19 attention - chest CT report", fontsize=16, weight="bold")
    colour = "#b00020" if diagnosis.pneumonia_detected else "#1b5e20"
    figure.text(0.06, 0.885, f"Finding: {diagnosis.finding}", fontsize=20, weight="bold", color=colour)


def _banner(figure: Figure):
    from matplotlib.patches import Rectangle

    return Rectangle((0, 0.953), 1, 0.04, transform=figure.transFigure, color="#b00020", zorder=-1)


def _numbers(figure: Figure, diagnosis, annotator: str | None, mask_version: int | None) -> None:
    rule = diagnosis.pneumonia_rule
    decision = "detected" if diagnosis.pneumonia_detected else "not detected"
    rows = [
        ("Pneumonia", f"{decision} (threshold: infection \u2265 {rule.min_infection_percent:.2f} % of lung volume)"),
        *[(f"P({name})", f"{p:.3f}") for name, p in diagnosis.probabilities.items()],
        ("Infection volume", f"{diagnosis.infection_volume_ml:.1f} mL"),
        ("Lung volume", f"{diagnosis.lung_volume_ml:.1f} mL"),
        ("Infection / lung volume", f"{diagnosis.infection_percent:.2f} %"),
        ("Model", f"{diagnosis.bundle_name} {diagnosis.bundle_version}"),
    ]
    if getattr(diagnosis, "bundle_label", ""):
        rows.append(("Model label", diagnosis.bundle_label))
    if annotator or mask_version is not None:
        version = f"version {mask_version}" if mask_version is not None else "corrected"
        rows.append(("Masks", f"{version}, corrected by {annotator}" if annotator else version))
    else:
        rows.append(("Masks", "model output, not reviewed"))
    y = 0.845
    for label, value in rows:
        figure.text(0.06, y, label, fontsize=10.5, weight="bold")
        figure.text(0.33, y, value, fontsize=10.5)
        y -= 0.026
    y = 0.075
    for note in list(getattr(diagnosis, "warnings", []) or [])[:2]:
        lines = textwrap.wrap(f"Note: {note}", 140)[:2]
        figure.text(0.05, y, "\n".join(lines), fontsize=7, color="#8a4b00", va="top")
        y -= 0.011 * len(lines) + 0.004


def _key_images(figure: Figure, volume: CTVolume, diagnosis) -> None:
    z = key_slice(diagnosis.infection_mask, diagnosis.lung_mask)
    spacing = volume.spacing_mm
    height_mm, width_mm = volume.shape[1] * spacing[1], volume.shape[2] * spacing[2]
    extent = (0, width_mm, height_mm, 0)
    low, high = window_limits("lung")
    ct = volume.hu[z]
    lungs, infection = diagnosis.lung_mask[z], diagnosis.infection_mask[z] > 0
    n_infected = int(np.count_nonzero(infection))
    position_mm = float((np.asarray(volume.affine) @ np.array([z, 0, 0, 1.0]))[2])
    figure.text(
        0.06, 0.575,
        f"Key slice: axial {z + 1} of {volume.shape[0]} (z = {position_mm:.1f} mm), "
        f"the most infected ({n_infected * spacing[1] * spacing[2] / 100:.1f} cm\u00b2 infection)"
        if n_infected else f"Key slice: axial {z + 1} of {volume.shape[0]} (no infection found; most lung)",
        fontsize=10,
    )
    big = figure.add_axes((0.05, 0.15, 0.5, 0.39))
    big.imshow(ct, cmap="gray", vmin=low, vmax=high, extent=extent, interpolation="nearest")
    for label, rgb in ((RIGHT_LUNG, _RIGHT_RGB), (LEFT_LUNG, _LEFT_RGB)):
        if (lungs == label).any():
            big.contour(lungs == label, levels=[0.5], colors=[rgb], linewidths=1.0, extent=extent, origin="upper")
    big.imshow(np.ma.masked_where(~infection, infection), cmap=ListedColormap([_INFECTION_RGB]), alpha=0.55, extent=extent, interpolation="nearest")
    _style(big, "CT (lung window) with masks")
    big.text(0.02, 0.02, "R", color="white", transform=big.transAxes, fontsize=9, weight="bold")
    big.text(0.95, 0.02, "L", color="white", transform=big.transAxes, fontsize=9, weight="bold")
    _legend(figure)
    for i, name in enumerate(("attention", "gradcam")):
        ax = figure.add_axes((0.6, 0.35 - i * 0.2, 0.36, 0.175))
        ax.imshow(ct, cmap="gray", vmin=low, vmax=high, extent=extent, interpolation="nearest")
        saliency = diagnosis.maps.get(name)
        if saliency is not None:
            values = map_on_slice(saliency.values, saliency.affine, volume.affine, z, ct.shape)
            ax.imshow(np.ma.masked_less(values, 0.05), cmap="inferno", vmin=0, vmax=1, alpha=0.6, extent=extent)
        if infection.any():
            ax.contour(infection, levels=[0.5], colors=["cyan"], linewidths=0.6, extent=extent, origin="upper")
        _style(ax, "Attention" if name == "attention" else "Grad-CAM")
    figure.text(
        0.6, 0.135,
        "Model saliency on the same slice (dark = 0,\nbright yellow = 1); cyan outline: infection mask.\n"
        "Where a map lies on the outline, the model\nlooked at the infection.",
        fontsize=7.5, va="top", color="0.2",
    )


def _legend(figure: Figure) -> None:
    y = 0.125
    for text, rgb in (("right lung", _RIGHT_RGB), ("left lung", _LEFT_RGB), ("infection", _INFECTION_RGB)):
        figure.patches.append(_swatch(figure, y, rgb))
        figure.text(0.09, y + 0.001, text, fontsize=9)
        y -= 0.02


def _swatch(figure: Figure, y: float, rgb):
    from matplotlib.patches import Rectangle

    return Rectangle((0.06, y), 0.022, 0.012, transform=figure.transFigure, color=rgb)


def _style(ax, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
