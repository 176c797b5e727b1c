"""docs/configuration.md is generated from the settings class and must not fall behind it."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ModelSpec, Settings
from devtools.config_docs import DOC_PATH, render

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_doc_is_up_to_date() -> None:
    written = (ROOT / DOC_PATH).read_text()
    assert written == render(), "docs/configuration.md is stale: run `internvl-jobs config-docs`"


@pytest.mark.parametrize("model", [Settings, ModelSpec])
def test_every_setting_says_what_it_does(model: type) -> None:
    undocumented = [name for name, f in model.model_fields.items() if not f.description]
    assert undocumented == [], "give these settings a description (they go into the docs)"


def test_each_setting_appears_with_its_variable_and_default() -> None:
    text = render()
    assert "| `INTERNVL_JOBS_WORKER_PROBE_PORT` | int (>= 0, <= 65535) | `9310` |" in text
    assert "| `INTERNVL_JOBS_ENVIRONMENT` | `development` \\| `test` \\| `production` |" in text
    assert "| `max_batch_size` | int (>= 1, <= 256) | `8` |" in text
