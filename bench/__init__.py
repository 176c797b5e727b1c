"""Benchmarks that print figures: the engine, the whole service, the submit path."""
