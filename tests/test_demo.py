"""The headless demo's virtual display: a server Qt cannot open is replaced, not fatal."""

from __future__ import annotations

import pytest

from napari_covid_attention import _demo
from napari_covid_attention.errors import UserFacingError


class _FakeServer:
    def __init__(self) -> None:
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True

    def wait(self, timeout: float | None = None) -> int:
        return 0


def test_a_display_qt_cannot_open_is_replaced_by_a_fresh_server(monkeypatch):
    servers = [_FakeServer(), _FakeServer()]
    monkeypatch.setattr(_demo.shutil, "which", lambda name: "/usr/bin/Xvfb")
    monkeypatch.setattr(_demo, "_start_xvfb", lambda xvfb, timeout_s: (servers.pop(0), "7" if len(servers) else "8"))
    monkeypatch.setattr(_demo, "_accepts_connections", lambda number, timeout_s: number == "8")
    monkeypatch.delenv("DISPLAY", raising=False)
    first_one = servers[0]
    server = _demo.start_virtual_display()
    assert first_one.terminated and not server.terminated
    assert _demo.os.environ["DISPLAY"] == ":8"


def test_no_usable_display_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_demo.shutil, "which", lambda name: "/usr/bin/Xvfb")
    monkeypatch.setattr(_demo, "_start_xvfb", lambda xvfb, timeout_s: (_FakeServer(), "5"))
    monkeypatch.setattr(_demo, "_accepts_connections", lambda number, timeout_s: False)
    with pytest.raises(UserFacingError, match="Xvfb did not start"):
        _demo.start_virtual_display(attempts=2)


def test_the_free_display_skips_locked_and_socketed_numbers(tmp_path):
    (tmp_path / ".X11-unix").mkdir()
    (tmp_path / ".X99-lock").write_text("123")
    (tmp_path / ".X11-unix" / "X100").write_text("")  # a stale socket of a dead server
    assert _demo._free_display(first=99, tmp=tmp_path) == "101"


@pytest.mark.skipif(_demo.shutil.which("Xvfb") is None, reason="Xvfb is not installed")
def test_a_real_virtual_display_accepts_a_qt_client(monkeypatch):
    monkeypatch.setenv("DISPLAY", "")  # restored after the test
    server = _demo.start_virtual_display(attempts=1)
    try:
        number = _demo.os.environ["DISPLAY"].lstrip(":")
        assert _demo._accepts_connections(number, timeout_s=30.0)
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def diagnosed_phantom(tiny_bundle):
    from napari_covid_attention.data.synthetic import generate_phantom
    from napari_covid_attention.diagnosis import diagnose
    from napari_covid_attention.models.bundle import load_bundle

    scan = generate_phantom(5, label="CAP", shape=(32, 64, 64))
    return scan, diagnose(scan.volume, load_bundle(tiny_bundle), "cpu")


@pytest.mark.viewer
def test_the_first_screenshot_of_the_hidden_window_shows_the_side_by_side_panels(make_napari_viewer, diagnosed_phantom):
    """The headless demo's compare screenshot: two fitted, titled panels, not one blocky zoom.

    A hidden window lays out its canvas, and napari sizes the grid's view boxes, only
    when drawn; a screenshot right after entering the view drew through 10 px view boxes.
    """
    import numpy as np
    from qtpy.QtCore import QPoint, QTimer

    from napari_covid_attention._layer_data import ct_layer_data
    from napari_covid_attention.widgets import layers as ops
    from napari_covid_attention.widgets.compare import CompareView

    scan, diagnosis = diagnosed_phantom
    viewer = make_napari_viewer(show=False)
    viewer.window._qt_window.resize(*_demo.WINDOW_SIZE)
    data, kwargs, _ = ct_layer_data(scan.volume, "ct")
    ct = viewer.add_image(data, **kwargs)
    ops.add_diagnosis_layers(viewer, ct, diagnosis)
    _demo.settle(viewer)
    viewer.screenshot(canvas_only=False, flash=False)  # the demo's diagnosis screenshot
    CompareView(viewer).enter(ct, ("attention", "gradcam"))
    QTimer.singleShot(0, viewer.reset_view)  # as the dock widget fits the grid
    _demo.settle(viewer)
    shot = viewer.screenshot(canvas_only=False, flash=False)  # the compare screenshot

    native = viewer.window._qt_viewer.canvas.native
    ratio = shot.shape[1] / viewer.window._qt_window.width()
    corner = native.mapTo(viewer.window._qt_window, QPoint(0, 0))
    x0, y0 = round(corner.x() * ratio), round(corner.y() * ratio)
    canvas = shot[y0 : y0 + round(native.height() * ratio), x0 : x0 + round(native.width() * ratio), :3]
    gray = canvas.astype(float).mean(axis=2)
    half = gray.shape[1] // 2
    left, right = gray[:, :half], gray[:, half : 2 * half]
    for panel in (left, right):
        # a fitted panel: the scan with background around it (the blocky zoom had none)
        assert (panel < 10).mean() > 0.2
        assert (panel > 100).mean() > 0.05
        # its title, white text in the band above the scan
        assert (panel[: panel.shape[0] // 10] > 200).sum() > 50
    # the same CT in both panels
    assert np.corrcoef(left.ravel(), right.ravel())[0, 1] > 0.7
