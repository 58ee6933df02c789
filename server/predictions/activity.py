"""The operator's log of predictions: one line when each is created, starts and ends.

Logger ``fluxserve.predictions``, info level, ``key=value`` fields an operator can grep::

    prediction 6f1c... created key=alice model=flux-dev size=1024x1024 steps=28 outputs=1
    prediction 6f1c... started key=alice model=flux-dev size=1024x1024 steps=28 worker=0 queued_s=0.41
    prediction 6f1c... ended key=alice model=flux-dev size=1024x1024 steps=28 outcome=success seconds=3.20

``key`` is the key's name in the key ring (``config-1``, a stored key's name, ``anonymous``),
never the key. ``seconds``: from start to end (0 for one that never started); ``error=`` follows
an error's outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from pipelines.inputs import output_size
from server.predictions.model import Prediction

log = logging.getLogger("fluxserve.predictions")

NAMES_RELOAD_S = 60.0  # an unknown owner reads the stored keys' names at most this often


class KeyNames(Protocol):
    def name_of(self, key_id: str) -> str | None:
        """The key's name when known without reading a store (never blocks)."""

    def load_names(self) -> None:
        """Learn every stored key's name (blocking: a store read)."""


class PredictionLog:
    """Writes the lines; ``names`` tells key names from owners (None: owners are shown by id)."""

    def __init__(self, names: KeyNames | None = None) -> None:
        self.names = names
        self._loaded_at = float("-inf")

    async def created(self, pred: Prediction) -> None:
        if log.isEnabledFor(logging.INFO):
            outputs = pred.params.get("num_outputs", 1)
            log.info("prediction %s created %s outputs=%s", pred.id, await self._fields(pred), outputs)

    async def started(self, pred: Prediction, worker: int | str) -> None:
        if log.isEnabledFor(logging.INFO):
            started = pred.started_at or time.time()
            queued = max(0.0, started - pred.created_at) if pred.created_at else 0.0
            log.info(
                "prediction %s started %s worker=%s queued_s=%.2f",
                pred.id,
                await self._fields(pred),
                worker,
                queued,
            )

    async def ended(self, pred: Prediction) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        seconds = 0.0
        if pred.started_at is not None:
            seconds = max(0.0, (pred.completed_at or time.time()) - pred.started_at)
        error = f" error={_one_line(pred.error)}" if pred.error else ""
        log.info(
            "prediction %s ended %s outcome=%s seconds=%.2f%s",
            pred.id,
            await self._fields(pred),
            pred.status.value,
            seconds,
            error,
        )

    async def _fields(self, pred: Prediction) -> str:
        return (
            f"key={await self._key_name(pred.owner)} model={pred.model} size={_size(pred)} "
            f"steps={pred.params.get('num_inference_steps', '?')}"
        )

    async def _key_name(self, owner: str) -> str:
        if self.names is None:
            return f"id:{owner[:12]}"
        name = self.names.name_of(owner)
        if name is None and time.monotonic() - self._loaded_at >= NAMES_RELOAD_S:
            self._loaded_at = time.monotonic()
            try:
                await asyncio.to_thread(self.names.load_names)
            except Exception:  # noqa: BLE001 - a log line never fails a prediction; the id stands in
                pass
            name = self.names.name_of(owner)
        return name if name is not None else f"id:{owner[:12]}"


def _size(pred: Prediction) -> str:
    """The output size: recorded at the end, else worked out from the inputs (img2img: the
    source image decides, so it is unknown until then)."""
    width, height = pred.extra.get("width"), pred.extra.get("height")
    if width and height:
        return f"{width}x{height}"
    params = pred.params
    if params.get("image"):
        return "img2img"
    try:
        width, height = output_size(params.get("aspect_ratio", "1:1"), params.get("megapixels", "1"))
    except KeyError:
        return "?"
    return f"{width}x{height}"


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")
