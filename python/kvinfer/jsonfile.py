"""Reading the JSON files of a model folder with errors that name the file."""

from __future__ import annotations

import json
from typing import Any


def read_json_object(path: str) -> dict[str, Any]:
    """The JSON object in `path`; ValueError naming the file when it is not valid UTF-8 JSON or not
    an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data
