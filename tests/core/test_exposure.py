"""Development holes (auth off, private or plain-http targets) only on a loopback-bound API."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cli.main import main
from core.config import Settings, get_settings
from core.exposure import UnsafeBind, check_bind, is_loopback
from devtools.embedded import run_dev


def _settings(tmp_path: Path, **fields: object) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="development",
        data_dir=tmp_path,
        **fields,
    )


HOLES = [
    {"auth_enabled": False},
    {"webhook_allow_private": True},
    {"webhook_allow_http": True},
    {"image_fetch_allow_private": True},
]


@pytest.mark.parametrize("hole", HOLES, ids=lambda h: next(iter(h)))
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "api.example.com"])
def test_holes_are_refused_off_loopback(tmp_path: Path, hole: dict, host: str) -> None:
    with pytest.raises(UnsafeBind, match=next(iter(hole))):
        check_bind(_settings(tmp_path, **hole), host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_may_open_every_hole(tmp_path: Path, host: str) -> None:
    settings = _settings(
        tmp_path, auth_enabled=False, webhook_allow_private=True, webhook_allow_http=True
    )
    assert is_loopback(host)
    check_bind(settings, host)


def test_a_secure_api_binds_anywhere(tmp_path: Path) -> None:
    check_bind(_settings(tmp_path), "0.0.0.0")


def test_the_override_is_logged_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path, auth_enabled=False, insecure_bind_override=True)
    with caplog.at_level(logging.WARNING, logger="core.exposure"):
        check_bind(settings, "0.0.0.0")
    assert any(
        "INSECURE" in r.message and "auth_enabled=false" in r.message for r in caplog.records
    )


def test_dev_on_all_interfaces_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INTERNVL_JOBS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("INTERNVL_JOBS_ENVIRONMENT", "development")
    get_settings.cache_clear()
    try:
        with pytest.raises(UnsafeBind):  # dev relaxes private and plain-http webhooks
            run_dev(host="0.0.0.0", port=0, auth=True, devices="cpu")
        monkeypatch.setenv("INTERNVL_JOBS_AUTH_ENABLED", "false")
        get_settings.cache_clear()
        with pytest.raises(SystemExit) as exit_info:
            main(["api", "--host", "0.0.0.0", "--port", "0"])
        assert exit_info.value.code == 2
    finally:
        get_settings.cache_clear()
    assert not list(tmp_path.iterdir())  # nothing was prepared
