"""Where the plugin keeps user data (bundles, annotations); torch-free so anything may import it."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_dir

HOME_ENV = "NAPARI_COVID_ATTENTION_HOME"


def data_home() -> Path:
    """The plugin's user data folder (``$NAPARI_COVID_ATTENTION_HOME`` overrides it)."""
    override = os.environ.get(HOME_ENV)
    return Path(override) if override else Path(user_data_dir("napari-covid-attention", appauthor=False))
