"""Small user preferences kept between sessions (annotator name, annotation store folder)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from napari_covid_attention.paths import data_home


def _path() -> Path:
    return data_home() / "settings.json"


def load_settings() -> dict:
    try:
        data = json.loads(_path().read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def save_setting(key: str, value: str | None) -> None:
    """Update one preference, atomically (a crash never leaves a half-written file)."""
    data = load_settings()
    if value is None:
        data.pop(key, None)
    else:
        data[key] = value
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)
