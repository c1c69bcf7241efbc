"""The core and the session layer run without a GUI: importing them loads no Qt and no napari.

Checked in a fresh interpreter, since the test process itself has napari and Qt loaded.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

CORE = ("io", "preprocess", "models", "explain", "training", "annotations", "data", "diagnosis", "batch", "cli", "export", "pacs")
GUI_PACKAGES = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari"}

# Imports each package with all of its submodules, then lists the GUI modules that came with them.
_PROBE = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in set(GUI_PACKAGES))))
""".replace("GUI_PACKAGES", repr(sorted(GUI_PACKAGES)))


def _gui_modules_loaded_by(*modules: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_core_imports_neither_qt_nor_napari():
    modules = [f"napari_covid_attention.{name}" for name in CORE] + ["napari_covid_attention._layer_data"]
    assert _gui_modules_loaded_by(*modules) == []


def test_session_layer_imports_neither_qt_nor_napari():
    if importlib.util.find_spec("napari_covid_attention.session") is None:
        pytest.skip("napari_covid_attention.session does not exist yet")
    pytest.importorskip("napari_covid_attention.session")
    assert _gui_modules_loaded_by("napari_covid_attention.session") == []
