"""A finished prediction as OpenAI's images answer, and the served models as OpenAI's model list."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from server.api.context import RenderContext
from server.api.openai.errors import SERVER_ERROR, OpenAIError
from server.predictions.model import Prediction
from server.predictions.models import ModelEntry

API = "openai"  # the value of Prediction.extra["api"] for predictions made on these routes
# OpenAI's `created` of a model: when this server's model names were fixed (Replicate's version date).
MODEL_CREATED = 1722470400  # 2024-08-01T00:00:00Z


async def images_response(ctx: RenderContext, pred: Prediction, response_format: str) -> dict[str, Any]:
    """``{"created", "data": [{"url"} | {"b64_json"}]}`` for a succeeded prediction."""
    if response_format == "url":
        data = [{"url": url} for url in ctx.output_urls(pred)]
    else:
        data = []
        for name in pred.output:
            content = await asyncio.to_thread(ctx.outputs.read, pred.id, name)
            if content is None:  # removed between the end and now: nothing a retry would not redo
                raise OpenAIError(500, f"The image {name} could not be read back", type=SERVER_ERROR)
            data.append({"b64_json": base64.b64encode(content).decode("ascii")})
    return {"created": int(pred.created_at), "data": data}


def model_object(model_id: str, entry: ModelEntry) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": entry.owner}
