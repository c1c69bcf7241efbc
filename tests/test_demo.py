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
