"""Regenerate the screenshots in docs/images from a real napari window (under Xvfb if needed).

    python scripts/make_screenshots.py [--bundle demo] [--real ../shared/data/chest-ct-dicom-lung-pet-ct-dx]
        [--real-volume ../shared/data/real-chest-ct/lidc-idri-0001.nii.gz] [--inserted runs/demo/inserted/images/X.nii.gz]

Writes: docks-covid-19.png and docks-corrections.png (the three docks tabbed on a
1600 x 1000 window, two scans open), real-series-lung-window.png (the real series as opened), real-series-lung-mask.png
(the same after diagnosis: lung mask outlined), real-volume-diagnosed.png (a real scan
without pneumonia after diagnosis, result card), real-inserted-diagnosed.png (a real scan
with inserted lesions after diagnosis), sample-attention.png (the sample phantom with
attention and infection mask, result card) and compare.png (attention | Grad-CAM | Grad-CAM++).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
PLUGIN = "napari-covid-attention"
SHARED = Path(os.environ.get("COVID_ATTENTION_SHARED_DATA", ROOT.parent / "shared" / "data"))


def settle(viewer) -> None:
    """Lay out and draw the window (grid view boxes included) before a screenshot: the
    headless demo's drawing path, so compare.png shows the panels, not one blocky zoom."""
    from napari_covid_attention._demo import settle as settle_window

    settle_window(viewer)


def fit(viewer) -> None:
    """Fit the camera to the canvas as laid out (not to the size it had before the first draw)."""
    settle(viewer)
    viewer.reset_view()


def pick(widget, layer) -> None:
    from napari_covid_attention._demo import pick_scan

    pick_scan(widget, layer)


def viewer_with_widget(bundle: str | None):
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "COVID-19 attention")
    if bundle:
        widget.set_bundle(bundle)
    return viewer, widget


def real_series(bundle: str | None, folder: Path) -> None:
    viewer, widget = viewer_with_widget(bundle)
    layer = viewer.open(folder, plugin=PLUGIN)[0]
    viewer.dims.set_point(0, float(layer.data_to_world((14, 0, 0))[0]))
    fit(viewer)
    settle(viewer)
    viewer.screenshot(str(OUT / "real-series-lung-window.png"), canvas_only=True)
    pick(widget, layer)
    widget.run_diagnosis(threaded=False)
    from napari_covid_attention.widgets import layers as ops

    lungs = ops.layer_of_kind(viewer, layer, "lung_mask")
    lungs.visible = True
    for kind in ("attention", "infection_mask"):
        ops.layer_of_kind(viewer, layer, kind).visible = False
    viewer.dims.set_point(0, float(layer.data_to_world((14, 0, 0))[0]))
    settle(viewer)
    viewer.screenshot(str(OUT / "real-series-lung-mask.png"), canvas_only=False)
    viewer.close()


def real_diagnosed(bundle: str | None, path: Path, name: str) -> None:
    """A real scan diagnosed: the slice with the most infection (or the middle), card visible."""
    viewer, widget = viewer_with_widget(bundle)
    layer = viewer.open(path, plugin=PLUGIN)[0]
    fit(viewer)
    pick(widget, layer)
    widget.run_diagnosis(threaded=False)
    from napari_covid_attention.widgets import layers as ops

    ops.layer_of_kind(viewer, layer, "lung_mask").visible = True
    infection = ops.layer_of_kind(viewer, layer, "infection_mask")
    if infection.data.any():
        widget.jump_to_infection()
    else:
        viewer.dims.set_point(0, float(layer.data_to_world((layer.data.shape[0] * 0.55, 0, 0))[0]))
    settle(viewer)
    viewer.screenshot(str(OUT / name), canvas_only=False)
    viewer.close()


def sample(bundle: str | None) -> None:
    viewer, widget = viewer_with_widget(bundle)
    layer = viewer.open_sample(PLUGIN, "covid_phantom")[0]
    fit(viewer)
    pick(widget, layer)
    widget.run_diagnosis(threaded=False)
    widget.jump_to_infection()
    settle(viewer)
    viewer.screenshot(str(OUT / "sample-attention.png"), canvas_only=False)
    widget.include_pp.setChecked(True)
    widget.compare_button.setChecked(True)
    settle(viewer)
    viewer.screenshot(str(OUT / "compare.png"), canvas_only=False)
    viewer.close()


def three_docks(bundle: str | None) -> None:
    """All three docks on a 1600 x 1000 window, two scans open, an edit saved."""
    from qtpy.QtWidgets import QDockWidget

    viewer, widget = viewer_with_widget(bundle)
    cap = viewer.open_sample(PLUGIN, "cap_phantom")[0]
    covid = viewer.open_sample(PLUGIN, "covid_phantom")[0]
    fit(viewer)
    for layer in (cap, covid):
        pick(widget, layer)
        widget.run_diagnosis(threaded=False)
    _, correct = viewer.window.add_plugin_dock_widget(PLUGIN, "Corrections")
    correct.annotator.setText("Dr Demo")
    correct.set_annotator()
    viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    widget.jump_to_infection()
    mask = correct.session.active.correction.layer
    z = int(round(mask.world_to_data(viewer.dims.point)[0]))
    mask.paint((z, mask.data.shape[1] // 2, mask.data.shape[2] // 3), 1)  # one brush stroke
    correct.save_now()
    from napari.qt.threading import WorkerBase

    WorkerBase.await_workers(60_000)
    settle(viewer)
    for name in ("Corrections", "COVID-19 attention"):
        dock = next(d for d in viewer.window._qt_window.findChildren(QDockWidget) if d.windowTitle().startswith(name))
        dock.raise_()
        settle(viewer)
        viewer.screenshot(str(OUT / f"docks-{name.split()[0].lower()}.png"), canvas_only=False)
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--real", type=Path, default=SHARED / "chest-ct-dicom-lung-pet-ct-dx")
    parser.add_argument("--real-volume", type=Path, default=SHARED / "real-chest-ct" / "lidc-idri-0001.nii.gz")
    parser.add_argument("--inserted", type=Path, default=None, help="a scan made by insert-lesions")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    # A fresh user data folder: the screenshots show a new store, and yours is not touched.
    os.environ.setdefault("NAPARI_COVID_ATTENTION_HOME", tempfile.mkdtemp(prefix="screenshots-home-"))
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        from napari_covid_attention._demo import start_virtual_display

        start_virtual_display()
    if args.real.is_dir():
        real_series(args.bundle, args.real)
    else:
        print(f"real series not found at {args.real}; skipping its screenshots")
    if args.real_volume.is_file():
        real_diagnosed(args.bundle, args.real_volume, "real-volume-diagnosed.png")
    if args.inserted is not None:
        real_diagnosed(args.bundle, args.inserted, "real-inserted-diagnosed.png")
    sample(args.bundle)
    three_docks(args.bundle)
    print(f"screenshots in {OUT}")


if __name__ == "__main__":
    main()
