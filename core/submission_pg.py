"""A job's submission in one PostgreSQL statement: its objects' locks and every row it adds.

A submission's transaction takes its objects' advisory locks (against retention, see
core.retention), records its images, inserts the job, its image references and its
job.queued event. Statement by statement that is five round trips, and SQLAlchemy's work
around each costs more CPU than the database's; on PostgreSQL one statement does it all
(data-modifying CTEs; a job's image references may name the job inserted beside them, since
foreign keys are checked at the end of the statement). The caller then stores the bytes under
those locks and commits, as on SQLite, where the statements stay separate.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from core.job_statements import NEW_JOB_COLUMNS
from core.jobs import job_queued, job_row
from core.models import Job
from core.retention import OBJECT_LOCK_NAMESPACE, object_lock_key

_JSON_COLUMNS = ("spec", "metadata", "webhook_events")


def _statement(job_columns: list[str]) -> Any:
    # The column names are the model's own (core.jobs), never input; every value is bound.
    values = ", ".join(
        f"CAST(:{name} AS json)" if name in _JSON_COLUMNS else f":{name}" for name in job_columns
    )
    return text(
        f"""
WITH locks AS (
    SELECT pg_advisory_xact_lock(:lock_namespace, key)
    FROM (SELECT unnest(CAST(:lock_keys AS integer[])) AS key ORDER BY 1) AS sorted
), image_rows AS (
    INSERT INTO images (tenant_id, sha256, format, width, height, byte_size, created_at,
                        last_used_at)
    SELECT :tenant_id, sha256, format, width, height, byte_size, :created_at, :created_at
    FROM unnest(CAST(:image_shas AS varchar[]), CAST(:image_formats AS varchar[]),
                CAST(:image_widths AS integer[]), CAST(:image_heights AS integer[]),
                CAST(:image_sizes AS bigint[])) AS sent(sha256, format, width, height, byte_size)
    ON CONFLICT (tenant_id, sha256) DO UPDATE SET last_used_at = excluded.last_used_at
), job_row AS (
    INSERT INTO jobs ({", ".join(job_columns)}) VALUES ({values})
), job_image_rows AS (
    INSERT INTO job_images (job_id, position, sha256)
    SELECT :id, ordinality - 1, sha256
    FROM unnest(CAST(:job_shas AS varchar[])) WITH ORDINALITY AS refs(sha256, ordinality)
), queued_event AS (
    INSERT INTO job_events (job_id, type, attempt, created_at, data)
    VALUES (:id, 'job.queued', 0, :created_at, CAST('{{}}' AS json))
)
SELECT count(*) FROM locks
"""  # noqa: S608
    )


_SUBMISSION = _statement(NEW_JOB_COLUMNS)


def insert_submission(
    session: Session,
    job: Job,
    *,
    sent: list[dict[str, Any]],
    objects: list[str],
) -> None:
    """Lock `objects`, record the images `sent` (image rows, as intake builds them), and
    insert `job` (from core.jobs.new_job) referring to `objects` in order, with its
    job.queued event; then tell the job event listeners."""
    row = job_row(job)
    for name in _JSON_COLUMNS:
        row[name] = json.dumps(row[name])
    session.execute(
        _SUBMISSION,
        {
            **row,
            "lock_namespace": OBJECT_LOCK_NAMESPACE,
            "lock_keys": sorted({object_lock_key(sha) for sha in objects}),
            "image_shas": [image["sha256"] for image in sent],
            "image_formats": [image["format"] for image in sent],
            "image_widths": [image["width"] for image in sent],
            "image_heights": [image["height"] for image in sent],
            "image_sizes": [image["byte_size"] for image in sent],
            "job_shas": objects,
        },
    )
    job_queued(session, job)
