"""Serving generated images at /v1/outputs/{id}/{name}."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse

from server.api.deps import app_state
from server.api.eachlabs.schemas import ErrorResponse
from server.api.errors import ApiError
from server.auth.keyring import extract_key

router = APIRouter()


@router.get(
    "/v1/outputs/{prediction_id}/{name}",
    summary="An output image",
    description="Output URLs are unguessable (the id carries 122 random bits). A request carrying another "
    "key's credentials gets 404; with `outputs.require_owner_key` only the owner's key is served.",
    responses={
        200: {"content": {"image/webp": {}, "image/jpeg": {}, "image/png": {}}},
        404: {"model": ErrorResponse, "description": "No such output (or another key's)."},
    },
    tags=["outputs"],
    # A key is optional here (the URL is enough) unless outputs.require_owner_key is on.
    openapi_extra={"security": [{}, {"ApiKey": []}, {"Bearer": []}]},
)
async def get_output(prediction_id: str, name: str, request: Request):
    state = app_state(request)
    stored = await asyncio.to_thread(state.outputs.open, prediction_id, name)
    if stored is None:
        raise ApiError(404, "Output not found")
    pred = await asyncio.to_thread(state.store.get, prediction_id)
    if pred is None or pred.data_removed or name not in pred.output:
        raise ApiError(404, "Output not found")
    key = extract_key(request.headers)
    if key is not None or state.settings.outputs.require_owner_key:
        identity = await asyncio.to_thread(state.keyring.authenticate, key)
        if identity is None or identity.key_id != pred.owner:
            raise ApiError(404, "Output not found")
    if stored.path is None:  # an object store: the client fetches it there
        return RedirectResponse(
            stored.url or "", status_code=307, headers={"Cache-Control": "private, no-store"}
        )
    return FileResponse(
        stored.path,
        media_type=stored.content_type,
        headers={"Cache-Control": "private, max-age=31536000, immutable"},
    )
