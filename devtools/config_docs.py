"""docs/configuration.md, generated from the Settings class (`internvl-jobs config-docs`)."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from core.config import ENV_PREFIX, ModelSpec, Settings

DOC_PATH = Path("docs") / "configuration.md"
HEADER = f"""# Configuration

Every setting is an environment variable with the prefix `{ENV_PREFIX}` (or a line of a `.env`
file in the working directory). Lists and objects are JSON. Only `core/config.py` reads the
environment; every process (API, workers, sweeper, webhook sender) reads the same names.

This file is generated from the `Settings` class: after changing a setting, run
`internvl-jobs config-docs` (a test fails while this file is out of date).
"""
MODEL_HEADER = """## Model registry entries

`{prefix}MODELS` is a JSON list of entries; each names an alias clients use and how workers
load the checkpoint. Example:

```bash
{prefix}MODELS='[{{"alias": "internvl3-8b", "checkpoint": "OpenGVLab/InternVL3-8B-hf", \
"default": true, "max_batch_size": 16}}]'
```
"""


def type_name(annotation: Any) -> str:
    """A short readable name of a field's type (Literal values listed)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in typing.get_args(annotation))
    if origin is list:
        return f"list of {type_name(typing.get_args(annotation)[0])}"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    """The default as a user would type it."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [item.model_dump(exclude_defaults=True) for item in value]
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str | Path):
        return f"`{value}`" if str(value) else "empty"
    return f"`{json.dumps(value)}`"


def bounds_text(field: FieldInfo) -> str:
    """Range constraints (ge, gt, le, lt) as text."""
    parts = []
    for item in field.metadata:
        for name, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(item, name, None) is not None:
                parts.append(f"{symbol} {getattr(item, name)}")
    return ", ".join(parts)


def field_rows(model: type[BaseModel], *, env: bool) -> list[str]:
    """One Markdown table row per field."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"`{ENV_PREFIX}{name.upper()}`" if env else f"`{name}`"
        bounds = bounds_text(field)
        kind = type_name(field.annotation) + (f" ({bounds})" if bounds else "")
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| {key} | {kind} | {default_text(field)} | {description} |")
    return rows


def render() -> str:
    """The whole of docs/configuration.md."""
    table = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    models = ["| field | type | default | meaning |", "|---|---|---|---|"]
    return "\n".join(
        [
            HEADER,
            "## Settings",
            "",
            *table,
            *field_rows(Settings, env=True),
            "",
            MODEL_HEADER.format(prefix=ENV_PREFIX),
            *models,
            *field_rows(ModelSpec, env=False),
            "",
        ]
    )


def write(path: Path = DOC_PATH) -> Path:
    """Write the generated file and return its path."""
    path.write_text(render())
    return path
