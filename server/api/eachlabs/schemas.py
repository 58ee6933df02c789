"""Pydantic models of the Eachlabs prediction contract, for the OpenAPI document and for
reading create requests. Request bodies are parsed by hand (server/api/eachlabs/routes.py) so
every error has the contract's shape; these models describe them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.inputs import FluxInputs, FluxLoraInputs, FluxSchnellInputs

Status = Literal["starting", "processing", "success", "error", "cancelled"]


class CreateRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "flux-dev",
                    "version": "0.0.1",
                    "input": {
                        "prompt": "a lighthouse at dawn, 35mm photo",
                        "aspect_ratio": "16:9",
                        "num_inference_steps": "28",
                    },
                }
            ]
        },
    )

    model: str = Field(
        description="Model slug: `flux-dev`, `black-forest-labs-flux-dev-lora`, `flux-schnell` "
        "(those configured; `GET /v1/models` lists them)."
    )
    version: str | None = Field(None, description="Accepted and ignored.")
    input: FluxInputs | FluxLoraInputs | FluxSchnellInputs = Field(
        description="The model's inputs (flux-dev's; flux-dev-lora's add the LoRA fields; flux-schnell "
        "takes at most 4 steps and no guidance); numbers may be numeric strings, null means default."
    )
    webhook_url: str | None = Field(None, description="POSTed once the prediction ends (success or error).")
    webhook_secret: str | None = Field(None, description="Sent back verbatim in `X-Webhook-Secret`.")
    previews: bool | None = Field(
        None,
        description="Make live previews while it runs (`progress.preview_url`); default: the "
        "server's `previews.enabled` (off unless the operator turned it on).",
    )


class CreateResponse(BaseModel):
    status: Literal["success"] = "success"
    message: str = "Prediction created successfully"
    predictionID: str


class CancelResponse(BaseModel):
    status: Literal["cancelled"] = "cancelled"
    message: str = "Prediction canceled successfully"
    predictionID: str


class DeleteResponse(BaseModel):
    status: Literal["deleted"] = "deleted"
    message: str = "Prediction deleted"
    predictionID: str


class ErrorResponse(BaseModel):
    error: str
    status: int
    details: Any | None = None


class Metrics(BaseModel):
    predict_time: float | None = Field(None, description="Seconds of model work.")
    queue_time: float | None = Field(None, description="Seconds spent waiting in the queue.")


class PredictionUrls(BaseModel):
    get: str
    cancel: str


class Progress(BaseModel):
    """Where a prediction that has not ended stands; every field is null when not known."""

    queue_position: int | None = Field(
        None, description="Queued only: predictions of its model queued ahead of it (0: it is next)."
    )
    step: int | None = Field(None, description="Denoising steps done (all images together).")
    total_steps: int | None = None
    percent: int | None = None
    elapsed_s: float | None = Field(None, description="Seconds since it started.")
    eta_s: float | None = Field(None, description="Seconds left, at the step rate measured so far.")
    preview_url: str | None = Field(
        None,
        description="Its newest live preview (WebP), when the create asked for previews "
        "(`GET /v1/prediction/{id}/preview`).",
    )


class PredictionResponse(BaseModel):
    id: str
    model: str
    input: dict[str, Any]
    status: Status
    output: str | list[str] | None = Field(
        None, description="One image: a URL string; several: a list of URLs, in order."
    )
    logs: str
    error: str | None
    metrics: Metrics
    created_at: str
    started_at: str | None
    completed_at: str | None
    urls: PredictionUrls
    data_removed: bool | None = Field(None, description="True when retention deleted the output files.")
    progress: Progress | None = Field(
        None, description="Queue place, steps, times and live preview; null once it has ended."
    )


class ExecutionsResponse(BaseModel):
    executions: list[PredictionResponse]
    total: int
    limit: int
    offset: int


class ModelInfo(BaseModel):
    slug: str
    name: str
    description: str
    version: str
    input_schema: dict[str, Any]
    warning: str | None = None


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
