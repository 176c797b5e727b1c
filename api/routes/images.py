"""Image routes: upload once, then reference by `image_id` in any number of jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import RuntimeDep, SessionDep, TenantDep
from api.intake import image_limits, resolve_model
from api.multipart import is_multipart, read_form
from api.openapi import problem_responses
from api.schemas import ImagePublic
from api.strict_json import StrictJsonRoute
from api.uploads import find_image, image_public, read_capped, register_upload
from core.errors import InvalidRequest, UnsupportedMediaType
from core.specs import IMAGE_ID_PATTERN

router = APIRouter(prefix="/v1/images", tags=["images"], route_class=StrictJsonRoute)

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}
ImageIdPath = Annotated[
    str, Path(pattern=IMAGE_ID_PATTERN, description="The `image_id` an upload answered with.")
]
ModelQuery = Annotated[
    str | None, Query(max_length=64, description="Quote tiles for this model (default model).")
]


async def read_image_body(request: Request, max_bytes: int, *, what: str = "image") -> bytes:
    """The file bytes of a raw or multipart upload (`what`: image or video, the field name)."""
    content_type = request.headers.get("content-type", "")
    if is_multipart(request):
        # Parsed on worker threads; the context closes the uploads' temporary files.
        async with read_form(
            request, files=frozenset({what}), texts=frozenset(), max_files=1, max_fields=1
        ) as form:
            upload = form.get(what)
            if not isinstance(upload, UploadFile):
                raise InvalidRequest(f"multipart uploads need a file field named '{what}'")
            return await read_capped(upload_chunks(upload), max_bytes=max_bytes, what=what)
    if content_type and not content_type.startswith((f"{what}/", "application/octet-stream")):
        raise UnsupportedMediaType(
            f"unsupported content type {content_type!r}; send the {what}'s bytes "
            f"({what}/* or application/octet-stream) or multipart/form-data"
        )
    return await read_capped(request.stream(), max_bytes=max_bytes, what=what)


async def upload_chunks(upload: UploadFile, size: int = 1 << 20) -> Any:
    while chunk := await upload.read(size):
        yield chunk


@router.post(
    "",
    status_code=201,
    response_model=ImagePublic,
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"model": ImagePublic, "description": "Already uploaded by this tenant"},
        **problem_responses(400, 401, 413, 415, 422, 429),
    },
)
async def upload_image(
    request: Request,
    response: Response,
    runtime: RuntimeDep,
    tenant_id: TenantDep,
    model: ModelQuery = None,
) -> dict[str, Any]:
    """Store an image once by content; reuse its `image_id` in jobs instead of re-sending it."""
    spec = resolve_model(runtime.settings, model)
    limits = image_limits(runtime.settings)
    data = await read_image_body(request, limits.max_bytes)
    info, created = await run_in_threadpool(
        register_upload, runtime, tenant_id=tenant_id, data=data, limits=limits
    )
    response.status_code = 201 if created else 200
    return image_public(
        sha256=info.sha256,
        fmt=info.format,
        width=info.width,
        height=info.height,
        byte_size=info.byte_size,
        model=spec,
    )


@router.get("/{image_id}", response_model=ImagePublic, responses=problem_responses(401, 404, 422))
def get_image(
    image_id: ImageIdPath,
    session: SessionDep,
    runtime: RuntimeDep,
    tenant_id: TenantDep,
    model: ModelQuery = None,
) -> dict[str, Any]:
    """What the service knows about one of the caller's images."""
    spec = resolve_model(runtime.settings, model)
    row = find_image(session, tenant_id, image_id)
    return image_public(
        sha256=row.sha256,
        fmt=row.format,
        width=row.width,
        height=row.height,
        byte_size=row.byte_size,
        model=spec,
    )
