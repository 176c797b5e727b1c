"""What validation checks, stated in the OpenAPI description.

The request models (core.specs) carry the fixed rules; this adds the rules that depend on the
settings (model aliases, caps) or on the task (which fields apply, how many images), and the
exact shape of multipart bodies, so a request the description allows is one the API accepts,
short of what no schema can say: that bytes decode as an image, that a chat's references point
at its images, that a cursor is one the service issued (docs/api.md lists these).
"""

from __future__ import annotations

from typing import Any

from core.config import Settings
from core.tasks import PRESETS

_NON_BLANK = {"type": "string", "pattern": r"\S"}
_NULL = {"type": "null"}
# Fields of JobCreate that only some tasks take, and the tasks' image minimums.
_TASK_FIELDS = {
    "caption": ({"prompt"}, 1),
    "ocr": ({"prompt"}, 1),
    "vqa": ({"question"}, 1),
    "compare": ({"prompt"}, 2),
    "chat": ({"messages"}, 0),
    "prompt": ({"prompt", "preset"}, 0),
}
_OPTIONAL_FIELDS = ("question", "prompt", "preset", "messages")


def state_validation(schema: dict[str, Any], settings: Settings) -> None:
    """Tighten the generated description to what the API validates under these settings."""
    components = schema["components"]["schemas"]
    _job_limits(components, settings)
    components["JobCreate"]["allOf"] = [_task_rule(task) for task in _TASK_FIELDS]
    _image_ref_choice(components["ImageRef"])
    components["BatchCreate"]["properties"]["jobs"]["maxItems"] = settings.max_jobs_per_batch
    paths = schema["paths"]
    aliases = [model.alias for model in settings.models]
    for operation in (paths["/v1/images"]["post"], paths["/v1/images/{image_id}"]["get"]):
        _parameter(operation, "model")["schema"] = {"type": "string", "enum": aliases}
    wait = _parameter(paths["/v1/jobs/{job_id}"]["get"], "wait")
    wait["schema"]["maximum"] = settings.max_wait_s
    _multipart(paths, settings)
    _refuse_nul(components)
    for item in paths.values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                _refuse_nul(parameter)


# No string the API reads may hold a NUL (PostgreSQL's text cannot): 400 in a path or query,
# 422 in a body (api.strict_json). Patterns that exist already exclude it.
NO_NUL = "^[^\\u0000]*$"


def _refuse_nul(node: Any) -> None:
    """Add NO_NUL to every string schema (and object keys) under node that has no pattern."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        if item.get("type") == "string" and not {"pattern", "enum", "const", "format"} & set(item):
            item["pattern"] = NO_NUL
        if item.get("type") == "object" and "propertyNames" not in item:
            item["propertyNames"] = {"pattern": NO_NUL}
        stack.extend(item.values())


def _job_limits(components: dict[str, Any], settings: Settings) -> None:
    job = components["JobCreate"]["properties"]
    aliases = [model.alias for model in settings.models]
    job["model"] = {
        "anyOf": [{"type": "string", "enum": aliases}, _NULL],
        "description": "A model alias (GET /v1/models); the default model if unset.",
    }
    job["images"]["maxItems"] = settings.max_images_per_job
    messages = job["messages"]["anyOf"][0]
    messages.update(minItems=1, maxItems=settings.max_messages_per_job)
    for name in ("question", "prompt"):
        job[name]["anyOf"][0]["maxLength"] = settings.max_text_chars
    job["preset"]["anyOf"][0]["enum"] = sorted(PRESETS)
    params = components["GenerationParams"]["properties"]
    params["max_new_tokens"]["maximum"] = settings.max_new_tokens_cap
    params["min_new_tokens"]["maximum"] = settings.max_new_tokens_cap
    params["max_tiles"]["anyOf"][0]["maximum"] = max(m.max_tiles for m in settings.models)


def _task_rule(task: str) -> dict[str, Any]:
    """JSON Schema's if/then for one task: its fields, the others null, its images."""
    allowed, min_images = _TASK_FIELDS[task]
    properties: dict[str, Any] = {name: _NULL for name in _OPTIONAL_FIELDS if name not in allowed}
    then: dict[str, Any] = {"properties": properties}
    if min_images:
        properties["images"] = {"minItems": min_images}
    if "prompt" in allowed and task != "prompt":
        properties["prompt"] = {"anyOf": [_NON_BLANK, _NULL]}
    if task == "vqa":
        properties["question"] = _NON_BLANK
        then["required"] = ["question"]
    if task == "chat":
        properties["messages"] = {"type": "array"}
        then["required"] = ["messages"]
    if task == "prompt":
        then["anyOf"] = [
            {"required": ["prompt"], "properties": {"prompt": _NON_BLANK, "preset": _NULL}},
            {"required": ["preset"], "properties": {"preset": {"type": "string"}, "prompt": _NULL}},
        ]
    return {"if": {"properties": {"task": {"const": task}}, "required": ["task"]}, "then": then}


def _image_ref_choice(image_ref: dict[str, Any]) -> None:
    # Exactly one of data, url and image_id, the others absent or null.
    names = ("data", "url", "image_id")
    image_ref["oneOf"] = [
        {
            "required": [name],
            "properties": {
                other: ({"type": "string"} if other == name else _NULL) for other in names
            },
        }
        for name in names
    ]


def _parameter(operation: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in operation.get("parameters", []) if p["name"] == name)


VIDEO_PARTS = "video/*, application/octet-stream"


def _multipart(paths: dict[str, Any], settings: Settings) -> None:
    # Files are parts with a filename; `spec` is a plain part holding JSON of its schema.
    bodies = {
        ("/v1/images", "post"): ({"image": "image/*, application/octet-stream"}, None),
        ("/v1/jobs", "post"): (
            {"images": "image/*, application/octet-stream", "video": VIDEO_PARTS},
            "JobCreate",
        ),
        ("/v1/videos", "post"): ({"video": VIDEO_PARTS}, None),
        ("/v1/batches", "post"): ({"file": "application/jsonl"}, "BatchOptions"),
    }
    for (path, method), (files, spec) in bodies.items():
        content = paths[path][method]["requestBody"]["content"]["multipart/form-data"]
        content["schema"]["additionalProperties"] = False
        content["encoding"] = {name: {"contentType": kind} for name, kind in files.items()}
        if spec is not None:
            content["schema"]["properties"]["spec"] = {
                "$ref": f"#/components/schemas/{spec}",
                "description": f"{spec} as JSON, in a part without a filename",
            }
            content["encoding"]["spec"] = {"contentType": "application/json"}
    jobs_form = paths["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    jobs_form["schema"]["properties"]["images"]["maxItems"] = settings.max_images_per_job
