"""Turning a stored Prediction into the contract's JSON answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from server.api.context import RenderContext
from server.predictions.model import Prediction
from server.predictions.progress import Progress

DATA_URL_ECHO_LIMIT = 256  # long data: URLs are summarised when inputs are echoed back


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def echo_input(raw: dict[str, Any]) -> dict[str, Any]:
    """The client's input as sent, with an inline image summarised instead of repeated."""
    out = dict(raw)
    image = out.get("image")
    if isinstance(image, str) and image.startswith("data:") and len(image) > DATA_URL_ECHO_LIMIT:
        head = image.split(",", 1)[0]
        out["image"] = f"{head},... ({len(image)} characters)"
    return out


def preview_url(base_url: str, prediction_id: str, step: int) -> str:
    """The newest preview's URL; the step makes each new preview a new URL (no stale caches)."""
    return f"{base_url}/v1/prediction/{prediction_id}/preview?step={step}"


def progress_body(ctx: RenderContext, pred: Prediction, progress: Progress | None) -> dict[str, Any] | None:
    """The ``progress`` field: null once the prediction has ended (or when not known)."""
    if progress is None or pred.terminal:
        return None
    return {
        "queue_position": progress.queue_position,
        "step": progress.step,
        "total_steps": progress.total_steps,
        "percent": progress.percent,
        "elapsed_s": progress.elapsed_s,
        "eta_s": progress.eta_s,
        "preview_url": (
            preview_url(ctx.base_url, pred.id, progress.preview_step)
            if progress.preview_step is not None
            else None
        ),
    }


def prediction_body(ctx: RenderContext, pred: Prediction, progress: Progress | None = None) -> dict[str, Any]:
    """The Eachlabs prediction body; ``progress``: where it stands (``PredictionService.progress``)."""
    base_url = ctx.base_url
    urls = ctx.output_urls(pred)
    output: str | list[str] | None
    if not urls:
        output = None
    elif len(urls) == 1:
        output = urls[0]  # the contract: one image gives one URL string
    else:
        output = urls
    body: dict[str, Any] = {
        "id": pred.id,
        "model": pred.model,
        "input": echo_input(pred.input),
        "status": pred.status,
        "output": output,
        "logs": pred.logs,
        "error": pred.error,
        "metrics": {
            "predict_time": round(pred.predict_time, 3) if pred.predict_time is not None else None,
            "queue_time": round(pred.queue_time, 3) if pred.queue_time is not None else None,
        },
        "created_at": iso(pred.created_at),
        "started_at": iso(pred.started_at),
        "completed_at": iso(pred.completed_at),
        "urls": {
            "get": f"{base_url}/v1/prediction/{pred.id}",
            "cancel": f"{base_url}/v1/prediction/{pred.id}/cancel",
        },
        "progress": progress_body(ctx, pred, progress),
    }
    if pred.data_removed:
        body["data_removed"] = True
    return body
