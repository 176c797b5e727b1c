"""GPU (or CPU) worker side of internvl-jobs: InternVL engine, batcher and Celery tasks."""
