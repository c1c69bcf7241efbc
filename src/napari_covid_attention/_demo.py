"""The README's main job: the sample CT in napari, diagnosed by the built-in demo model.

With a screen it opens the viewer with the plugin's dock widget and starts the diagnosis
in the background; ``headless`` writes screenshots and a JSON summary instead (and is
chosen automatically when there is no screen).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from napari_covid_attention.errors import UserFacingError

PLUGIN = "napari-covid-attention"
SAMPLE_KEYS = {"COVID-19": "covid_phantom", "CAP": "cap_phantom"}
WINDOW_SIZE = (1600, 1000)


def run_demo(
    label: str = "COVID-19", headless: bool = False, out_dir: Path | None = None, bundle: str | None = None
) -> Path | None:
    """Open (or, headless, render) the sample scan with its diagnosis; returns the summary path."""
    if not headless and not _has_screen():
        print("No screen found: writing headless output instead (screenshots + summary).")
        headless = True
    xvfb = start_virtual_display() if headless and not _has_screen() else None
    try:
        return _run(label, headless, Path(out_dir or "demo-output"), bundle)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=10)


def _run(label: str, headless: bool, out_dir: Path, bundle: str | None) -> Path | None:
    import napari

    viewer = napari.Viewer(title="napari-covid-attention demo", show=not headless)
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    ct_layer = viewer.open_sample(PLUGIN, SAMPLE_KEYS[label])[0]
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "COVID-19 attention")
    if bundle is not None:
        widget.set_bundle(bundle)
    pick_scan(widget, ct_layer)
    if not headless:
        worker = widget.run_diagnosis()
        if worker is not None:
            worker.returned.connect(lambda _result: widget.jump_to_infection())
        napari.run()
        return None

    settle(viewer)  # the hidden window gets its real canvas size: fit the scan to that
    viewer.reset_view()
    widget.run_diagnosis(threaded=False)
    found = widget.current_result()  # (diagnosis, CT layer) of the scan just diagnosed
    if found is None:
        raise UserFacingError("The demo diagnosis did not run; see the message above.")
    diagnosis = found[0]
    widget.jump_to_infection()
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = [out_dir / "demo-diagnosis.png", out_dir / "demo-compare.png"]
    settle(viewer)
    viewer.screenshot(str(shots[0]), canvas_only=False)
    widget.compare_button.setChecked(True)
    settle(viewer)
    viewer.screenshot(str(shots[1]), canvas_only=False)
    widget.compare_button.setChecked(False)

    from napari_covid_attention._sample_data import sample_phantom

    summary = demo_summary(ct_layer.name, diagnosis, sample_phantom(label), shots)
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    viewer.close()
    return summary_path


def demo_summary(scan_name: str, diagnosis, truth, screenshots: list[Path]) -> dict:
    """The headless demo's summary.json: the finding first, then the scan, the full
    diagnosis summary, the phantom's truth and the maps' localization against it."""
    return {
        "finding": diagnosis.finding,
        "pneumonia_detected": diagnosis.pneumonia_detected,
        "scan": scan_name,
        "shape_zyx": list(truth.volume.shape),
        "spacing_mm_zyx": [round(s, 4) for s in truth.volume.spacing_mm],
        "diagnosis": diagnosis.summary(),
        "phantom_truth": {
            "label": truth.label,
            "infection_fraction": round(truth.infection_fraction, 4),
            "lesions": [k for k, v in truth.lesion_flags.items() if v],
        },
        "localization_vs_truth": {
            name: None if s is None else s.to_dict() for name, s in diagnosis.localization(truth.infection_mask).items()
        },
        "screenshots": [s.name for s in screenshots],
    }


def finding_line(diagnosis_summary: dict) -> str:
    """One line, the finding first: "No pneumonia detected (...)" or "Pneumonia detected,
    most likely COVID-19 (...)"; from :meth:`Diagnosis.summary` (also as read back from JSON)."""
    from napari_covid_attention.widgets.card import percent_of_lungs

    classes = " vs ".join(f"{name} {100.0 * p:.1f} %" for name, p in diagnosis_summary["probabilities"].items())
    burden = f"infection {percent_of_lungs(diagnosis_summary['infection_percent'])} of the lungs"
    threshold = f"{diagnosis_summary['pneumonia_threshold_percent']:.3g} %"
    if not diagnosis_summary["pneumonia_detected"]:
        return f"{diagnosis_summary['finding']} ({burden}, below the {threshold} threshold; if this were pneumonia: {classes})"
    return f"Pneumonia detected, most likely {diagnosis_summary['finding']} ({classes}; {burden}, threshold {threshold})"


def pick_scan(widget, layer) -> None:
    """Choose ``layer`` as the dock widget's scan (its layer picker, or the older name combo)."""
    if hasattr(widget, "layer_picker"):
        widget.layer_picker.value = layer
    else:
        widget.layer_combo.setCurrentText(layer.name)


def settle(viewer, rounds: int = 8) -> None:
    """Lay out and draw the window, grid view boxes included, before a screenshot.

    A window that was never shown gets its widgets' sizes only when it is grabbed, and
    napari's canvas sizes the grid's view boxes (and fits their cameras) only on a draw:
    a screenshot taken right after entering the side-by-side view drew one blocky,
    zoomed-in panel through view boxes still 10 px wide. So the window is grabbed (which
    lays it out and draws the canvas) and Qt's events are processed (the widget's
    deferred camera fit, the overlays) until the canvas and its view boxes stop changing.
    """
    from qtpy.QtWidgets import QApplication

    last = None
    for _ in range(rounds):
        QApplication.processEvents()
        viewer.window._qt_window.grab()
        QApplication.processEvents()
        state = _drawn_state(viewer)
        if state == last:
            return
        last = state


def _drawn_state(viewer) -> tuple:
    """What a draw can still change: the canvas and view box sizes and the camera."""
    from napari_covid_attention.widgets.compare import camera_of, grid_of

    canvas = viewer.window._qt_viewer.canvas
    views = [getattr(canvas, "view", None)]
    if grid_of(viewer).enabled:
        views = list(getattr(canvas, "grid_views", None) or views)
    boxes = tuple(tuple(float(v) for v in view.rect.size) for view in views if view is not None)
    camera = camera_of(viewer)
    return tuple(canvas.size), boxes, float(camera.zoom), tuple(camera.center)


def _has_screen() -> bool:
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def start_virtual_display(timeout_s: float = 10.0, attempts: int = 3) -> subprocess.Popen:
    """Start Xvfb so napari can render offscreen with OpenGL.

    ``QT_QPA_PLATFORM=offscreen`` alone gives Qt no OpenGL context, so napari's canvas
    would stay black; a virtual X server is the dependable way on a headless machine.
    Each server is checked by a throwaway Qt client first (Qt aborts a process that
    cannot open its display), and a server that fails the check is replaced.
    """
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise UserFacingError("Headless rendering needs Xvfb (Debian/Ubuntu: apt-get install xvfb).")
    for _ in range(attempts):
        proc, number = _start_xvfb(xvfb, timeout_s)
        if number and _accepts_connections(number, timeout_s):
            os.environ["DISPLAY"] = f":{number}"
            return proc
        proc.terminate()
        proc.wait(timeout=10)
    raise UserFacingError("Xvfb did not start; cannot render headless screenshots.")


def _start_xvfb(xvfb: str, timeout_s: float) -> tuple[subprocess.Popen, str]:
    """An Xvfb process on a free display, and that display ("" if it was not ready in time).

    Readiness is Xvfb's SIGUSR1 to a parent that started it with SIGUSR1 ignored, as
    xvfb-run does. ``-displayfd`` was used before: it takes no lock file, and on the 2-core
    test machine about half of the servers it started never accepted a Qt client (0 of 8
    in one run, against 8 of 8 this way). Call from the main thread (signal handlers).
    """
    number = _free_display()
    ready = []
    signal.signal(signal.SIGUSR1, lambda *_: ready.append(True))
    proc = subprocess.Popen(
        # -noreset: when the last client leaves, Xvfb would reset and signal its parent
        # again, mid-demo.
        [xvfb, f":{number}", "-noreset", "-screen", "0", "1920x1200x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN),
    )
    deadline = time.monotonic() + timeout_s
    while not ready and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a stray one must not end the demo
    return proc, number if ready else ""


def _free_display(first: int = 99, tmp: Path = Path("/tmp")) -> str:
    """The first display number with neither a lock file nor a socket (xvfb-run -a's rule)."""
    for number in range(first, first + 100):
        if not (tmp / f".X{number}-lock").exists() and not (tmp / ".X11-unix" / f"X{number}").exists():
            return str(number)
    raise UserFacingError(f"No free X display between :{first} and :{first + 99}; stop stale Xvfb servers.")


def _accepts_connections(display: str, timeout_s: float, tries: int = 2) -> bool:
    """Whether a Qt application can open the display (tried in a child process).

    When it cannot, Qt aborts the whole process ("could not connect to display"), so a
    throwaway child takes that risk instead of the demo.
    """
    probe = "from qtpy.QtWidgets import QApplication; QApplication([])"
    env = {**os.environ, "DISPLAY": f":{display}"}
    for _ in range(tries):
        try:
            done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=max(timeout_s, 30.0))
        except subprocess.TimeoutExpired:
            continue
        if done.returncode == 0:
            return True
        time.sleep(0.5)
    return False
