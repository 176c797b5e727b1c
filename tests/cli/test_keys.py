"""`internvl-jobs keys create|list|revoke|limit`: keys and limits set on the command line."""

from __future__ import annotations

import subprocess
import sys

from fastapi.testclient import TestClient

from api.deps import Runtime
from core.tenants import find_tenant
from tests.support import service_env


def keys(runtime: Runtime, *args: str) -> subprocess.CompletedProcess[str]:
    env = service_env(INTERNVL_JOBS_DATABASE_URL=runtime.settings.database_url)
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_created_key_authenticates_until_revoked(
    auth_client: TestClient, auth_runtime: Runtime
) -> None:
    created = keys(auth_runtime, "create", "--tenant", "acme", "--name", "billing")
    assert created.returncode == 0, created.stderr
    plaintext = created.stdout.strip()
    headers = {"Authorization": f"Bearer {plaintext}"}
    assert auth_client.get("/v1/jobs", headers=headers).status_code == 200

    listed = keys(auth_runtime, "list", "--tenant", "acme")
    prefix = "_".join(plaintext.split("_")[:2])
    assert prefix in listed.stdout and "billing" in listed.stdout
    assert plaintext not in listed.stdout

    revoked = keys(auth_runtime, "revoke", prefix, "--tenant", "acme")
    assert revoked.returncode == 0, revoked.stderr
    assert auth_client.get("/v1/jobs", headers=headers).status_code == 401


def test_a_key_of_another_tenant_cannot_be_revoked(auth_runtime: Runtime) -> None:
    created = keys(auth_runtime, "create", "--tenant", "acme")
    keys(auth_runtime, "create", "--tenant", "globex")
    prefix = "_".join(created.stdout.strip().split("_")[:2])
    refused = keys(auth_runtime, "revoke", prefix, "--tenant", "globex")
    assert refused.returncode == 1
    assert "no API key" in refused.stderr


def test_listing_an_unknown_tenant_fails_clearly(auth_runtime: Runtime) -> None:
    result = keys(auth_runtime, "list", "--tenant", "nobody")
    assert result.returncode == 1
    assert "no tenant named 'nobody'" in result.stderr


def test_a_tenants_running_limit_is_set_shown_and_reset(auth_runtime: Runtime) -> None:
    keys(auth_runtime, "create", "--tenant", "acme")
    assert (
        "max running jobs no limit (default"
        in keys(auth_runtime, "list", "--tenant", "acme").stderr
    )
    assert (
        keys(auth_runtime, "limit", "--tenant", "acme", "--max-running-jobs", "2").returncode == 0
    )
    with auth_runtime.sessions() as session:
        assert find_tenant(session, "acme").max_running_jobs == 2
    assert "max running jobs 2 (its own)" in keys(auth_runtime, "list", "--tenant", "acme").stderr
    reset = keys(auth_runtime, "limit", "--tenant", "acme", "--max-running-jobs", "default")
    assert reset.returncode == 0, reset.stderr
    with auth_runtime.sessions() as session:
        assert find_tenant(session, "acme").max_running_jobs is None


def test_a_bad_running_limit_is_refused(auth_runtime: Runtime) -> None:
    keys(auth_runtime, "create", "--tenant", "acme")
    refused = keys(auth_runtime, "limit", "--tenant", "acme", "--max-running-jobs", "-1")
    assert refused.returncode == 2 and ">= 0 (0: no limit) or 'default'" in refused.stderr
    unknown = keys(auth_runtime, "limit", "--tenant", "nobody", "--max-running-jobs", "1")
    assert unknown.returncode == 1 and "no tenant named 'nobody'" in unknown.stderr
