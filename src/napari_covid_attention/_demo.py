"""The README's main job: the sample CT in napari with the plugin, or headless output."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from napari_covid_attention._sample_data import sample_phantom
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.windows import window_limits


def run_demo(label: str = "COVID-19", headless: bool = False, out_dir: Path | None = None) -> Path | None:
    """Open the sample scan in napari; with ``headless`` write screenshots and a JSON summary.

    Without a screen (no ``DISPLAY`` on Linux) the demo switches to headless output and
    says so, instead of failing inside Qt.
    """
    if not headless and not _has_screen():
        print("No screen found: writing headless output instead (screenshots + summary).")
        headless = True
    xvfb = _start_virtual_display() if headless and not _has_screen() else None
    try:
        return _run(label, headless, Path(out_dir or "demo-output"))
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=10)


def _run(label: str, headless: bool, out_dir: Path) -> Path | None:
    import napari

    from napari_covid_attention._layer_data import ct_layer_data
    from napari_covid_attention.widgets.window import WindowPresetWidget

    phantom = sample_phantom(label)
    viewer = napari.Viewer(title="napari-covid-attention demo", show=not headless)
    data, kwargs, _ = ct_layer_data(phantom.volume, f"sample CT ({label}-like phantom)")
    ct_layer = viewer.add_image(data, **kwargs)
    viewer.window.add_dock_widget(WindowPresetWidget(viewer), name="CT window presets", area="right")
    # Open on the slice with the most infection so the first view shows the disease.
    infected_per_slice = phantom.infection_mask.reshape(phantom.infection_mask.shape[0], -1).sum(1)
    viewer.dims.set_point(0, _world_z(ct_layer, int(np.argmax(infected_per_slice))))
    viewer.reset_view()
    if not headless:
        napari.run()
        return None

    out_dir.mkdir(parents=True, exist_ok=True)
    screenshot = out_dir / "demo-lung-window.png"
    viewer.screenshot(str(screenshot), canvas_only=False)
    summary = {
        "scan": ct_layer.name,
        "shape_zyx": list(phantom.volume.shape),
        "spacing_mm_zyx": [round(s, 4) for s in phantom.volume.spacing_mm],
        "window_hu": list(window_limits("lung")),
        "phantom_truth": {
            "label": phantom.label,
            "infection_fraction": round(phantom.infection_fraction, 4),
            "lesions": [k for k, v in phantom.lesion_flags.items() if v],
        },
        "screenshots": [screenshot.name],
    }
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    viewer.close()
    return summary_path


def _world_z(layer, z_index: int) -> float:
    return float(layer.data_to_world((z_index, 0, 0))[0])


def _has_screen() -> bool:
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _start_virtual_display(timeout_s: float = 10.0) -> subprocess.Popen | None:
    """Start Xvfb (when installed) so napari can render offscreen with OpenGL.

    ``QT_QPA_PLATFORM=offscreen`` alone gives Qt no OpenGL context, so napari's canvas
    would stay black; a virtual X server is the dependable way on a headless machine.
    """
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise UserFacingError(
            "Headless rendering needs Xvfb (Debian/Ubuntu: apt-get install xvfb)."
        )
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], timeout_s)
    number = os.read(read_fd, 32).decode().strip() if ready else ""
    os.close(read_fd)
    if not number:
        proc.terminate()
        raise UserFacingError("Xvfb did not start; cannot render headless screenshots.")
    os.environ["DISPLAY"] = f":{number}"
    return proc
