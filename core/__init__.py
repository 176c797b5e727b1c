"""Code shared by the submit API and the workers: configuration, data model, queue, storage."""
