"""The grammar-library comparison: figures for each installed library, the others named missing."""

from __future__ import annotations

from pathlib import Path

from bench.structured_libraries import compare


def test_llguidance_is_measured_and_a_missing_library_is_reported(tiny_model_path: Path) -> None:
    libraries = {"llguidance": "llguidance", "grammar-lib-absent": "grammar_lib_absent"}
    report = compare(str(tiny_model_path), rows=4, libraries=libraries)
    assert report["grammar-lib-absent"]["installed"] is False
    figures = report["llguidance"]
    assert figures["rows"] == [
        "document_json",
        "document_type",
        "document_fields",
        "document_summary",
    ]
    assert (
        set(figures["compile_cold_ms"]) == set(figures["compile_cached_ms"]) == set(figures["rows"])
    )
    for mode in ("masks_first_use", "masks_one_by_one", "masks_batch_call"):
        # Every token of the valid documents, and each end, was allowed by its row's mask.
        assert figures[mode]["refused"] == 0
        assert figures[mode]["row_steps"] > figures[mode]["steps"] > 0
