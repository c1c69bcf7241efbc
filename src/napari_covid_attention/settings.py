"""Small user preferences kept between sessions (annotator name, annotation store folder)."""

from __future__ import annotations

import json
from pathlib import Path

from napari_covid_attention.atomic import write_json_atomic
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
    write_json_atomic(_path(), data)
