"""The submit API (FastAPI): validates requests, stores images, queues jobs; never imports torch."""
