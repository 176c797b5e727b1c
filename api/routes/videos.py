"""Video routes: upload a clip once, then reference it by `video_id` in video jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import RuntimeDep, SessionDep, TenantDep
from api.intake import video_limits
from api.openapi import problem_responses
from api.routes.images import read_image_body
from api.schemas import VideoPublic
from api.strict_json import StrictJsonRoute
from api.uploads import find_video, register_video, video_public

router = APIRouter(prefix="/v1/videos", tags=["videos"], route_class=StrictJsonRoute)

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "video/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video"],
                    "properties": {"video": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=VideoPublic,
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"model": VideoPublic, "description": "Already uploaded by this tenant"},
        **problem_responses(400, 401, 413, 415, 422, 429),
    },
)
async def upload_video(
    request: Request, response: Response, runtime: RuntimeDep, tenant_id: TenantDep
) -> dict[str, Any]:
    """Check and store a clip once by content; reuse its `video_id` in video jobs."""
    limits = video_limits(runtime.settings)
    data = await read_image_body(request, limits.max_bytes, what="video")
    info, created = await run_in_threadpool(
        register_video, runtime, tenant_id=tenant_id, data=data, limits=limits
    )
    response.status_code = 201 if created else 200
    return video_public(info)


@router.get("/{video_id}", response_model=VideoPublic, responses=problem_responses(401, 404, 422))
def get_video(video_id: str, session: SessionDep, tenant_id: TenantDep) -> dict[str, Any]:
    """What the service knows about one of the caller's videos."""
    return video_public(find_video(session, tenant_id, video_id))
