"""The webhook sender process (CPU only): a Celery worker on the webhook queue that signs and sends deliveries."""
