"""Schemas shared by the structured-output tests of the engine and of the whole service."""

from __future__ import annotations

from core.tasks import preset_format

TICKET = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["invoice", "receipt", "letter"]},
        "pages": {"type": "integer", "minimum": 1, "maximum": 9},
        "paid": {"type": "boolean"},
        "ref": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
    },
    "required": ["kind", "pages", "paid", "ref"],
    "additionalProperties": False,
}
TICKET_FORMAT = {"type": "json_schema", "name": "ticket", "schema": TICKET}
DOCUMENT_TYPE = (preset_format("document_type") or {})["schema"]
