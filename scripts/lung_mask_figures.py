"""Figures of the classical lung mask on the real chest CT in ../shared/data.

    python scripts/lung_mask_figures.py [--data ../shared/data] [--out docs/images/lung-mask]

For each scan (the four NIfTI volumes in real-chest-ct/ and the 30-slice DICOM series
chest-ct-dicom-lung-pet-ct-dx/), writes <name>.png: three axial slices (upper, middle and
lower lung) and one coronal slice at the true aspect ratio, in the lung window (W 1500,
L -600), right lung outlined in green and left lung in magenta, patient's right on the
image's left; the title gives the lung volumes. Prints a Markdown table row per scan
(voxels, spacing, volumes, the median of three timings of ``lung_mask``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from napari_covid_attention.io import load_ct  # noqa: E402
from napari_covid_attention.preprocess.lung import LEFT_LUNG, RIGHT_LUNG, lung_mask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COVID_ATTENTION_SHARED_DATA", ROOT.parent / "shared" / "data"))
WINDOW = (-600.0 - 750.0, -600.0 + 750.0)  # W 1500 / L -600
COLOURS = {RIGHT_LUNG: "#39e639", LEFT_LUNG: "#ff4dff"}


def scans(data: Path) -> list[tuple[str, Path]]:
    found = [(p.name.removesuffix(".nii.gz"), p) for p in sorted((data / "real-chest-ct").glob("*.nii.gz"))]
    series = data / "chest-ct-dicom-lung-pet-ct-dx"
    if series.is_dir():
        found.append((series.name, series))
    return found


def outline(ax, mask: np.ndarray) -> None:
    """Each lung's outline, in pixel coordinates (as ``imshow`` places the image)."""
    for label, colour in COLOURS.items():
        if (mask == label).any():
            ax.contour(mask == label, levels=[0.5], colors=colour, linewidths=0.9)


def figure(name: str, hu: np.ndarray, spacing: tuple[float, float, float], mask: np.ndarray, out: Path) -> dict:
    dz, dy, dx = spacing
    ml = dz * dy * dx / 1000.0
    volumes = {label: np.count_nonzero(mask == label) * ml for label in (RIGHT_LUNG, LEFT_LUNG)}
    rows = np.flatnonzero((mask > 0).any(axis=(1, 2)))
    levels = [int(round(rows[0] + share * (rows[-1] - rows[0]))) for share in (0.8, 0.5, 0.2)]
    # Crop the axial views to the body (what is not air), with a margin.
    body = (hu > -500).any(axis=0)
    ys, xs = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    y0, y1 = max(ys[0] - 10, 0), min(ys[-1] + 10, hu.shape[1])
    x0, x1 = max(xs[0] - 10, 0), min(xs[-1] + 10, hu.shape[2])
    coronal_y = int(np.argmax(np.count_nonzero(mask > 0, axis=(0, 2))))

    # Panels share a height: each one's width is its image's width / height in mm.
    axial = (x1 - x0) * dx / ((y1 - y0) * dy)
    coronal = (x1 - x0) * dx / (hu.shape[0] * dz)
    height = 3.9
    fig, axes = plt.subplots(
        1, 4, dpi=72, figsize=(height * (3 * axial + coronal) + 0.6, height + 0.5), gridspec_kw={"width_ratios": [axial] * 3 + [coronal]}
    )
    for ax, z, where in zip(axes[:3], levels, ("upper", "middle", "lower"), strict=True):
        ax.imshow(hu[z, y0:y1, x0:x1], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=dy / dx, interpolation="bilinear")
        outline(ax, mask[z, y0:y1, x0:x1])
        ax.set_title(f"axial z={z} ({where} lung)", fontsize=9)
    # Coronal: superior at the top, true aspect (slice spacing vs pixel size).
    ax = axes[3]
    ax.imshow(hu[::-1, coronal_y, x0:x1], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=dz / dx, interpolation="bilinear")
    outline(ax, mask[::-1, coronal_y, x0:x1])
    for z in levels:
        ax.axhline(hu.shape[0] - 1 - z, color="#ffd21f", linewidth=0.6, linestyle="--")
    ax.set_title(f"coronal y={coronal_y} (dashes: the axial slices)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    total = sum(volumes.values())
    fig.suptitle(
        f"{name}: right lung {volumes[RIGHT_LUNG]:.0f} mL (green), left lung {volumes[LEFT_LUNG]:.0f} mL (magenta), "
        f"total {total:.0f} mL   [{hu.shape[2]}x{hu.shape[1]}x{hu.shape[0]}, {dx:.2f} x {dy:.2f} x {dz:.3g} mm; "
        "lung window W 1500 / L -600; patient's right on the left]",
        fontsize=9.5,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    plt.close(fig)
    # 128 colours (grey levels and the two outline colours) keep each PNG well under 300 KB.
    Image.fromarray(rgb).quantize(colors=128, dither=Image.Dither.NONE).save(out, optimize=True)
    return {"right": volumes[RIGHT_LUNG], "left": volumes[LEFT_LUNG], "total": total}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED, help="the shared data folder (default ../shared/data)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "lung-mask")
    args = parser.parse_args(argv)
    found = scans(args.data)
    if not found:
        raise SystemExit(f"no real chest CT under {args.data}")
    print("| scan | voxels (x, y, z) | spacing mm (x, y, z) | right mL | left mL | total mL | lung_mask s |")
    print("|---|---|---|---|---|---|---|")
    for name, path in found:
        volume = load_ct(path)
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            mask = lung_mask(volume.hu, volume.spacing_mm)
            timings.append(time.perf_counter() - start)
        ml = figure(name, volume.hu, volume.spacing_mm, mask, args.out / f"{name}.png")
        dz, dy, dx = volume.spacing_mm
        nz, ny, nx = volume.shape
        print(
            f"| {name} | {nx} x {ny} x {nz} | {dx:.3f} x {dy:.3f} x {dz:.3g} | {ml['right']:.0f} | {ml['left']:.0f} "
            f"| {ml['total']:.0f} | {np.median(timings):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
