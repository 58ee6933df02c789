"""The prediction service: the one core behind every HTTP contract (Eachlabs, Replicate, ...).

A contract parses its own request shape, then asks this service to create, read, cancel, wait
for or list predictions; it renders the answers and the domain errors (``errors.py``) in its own
shape. What the service decides is the same for every contract: which inputs are valid (resolved
once, at create, with the model's defaults, and stored as ``Prediction.params`` for the worker to
trust), the in-flight limit, who may see a prediction, what a cancel does, and who is told.

It knows the store, the workers and the change feed only through the small interfaces below,
so an API-only replica (the workers on other hosts, the feed over the database) plugs in others.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipelines.images import data_url_size_problem
from pipelines.inputs import InvalidInputs
from server.predictions.activity import PredictionLog
from server.predictions.errors import (
    AlreadyFinished,
    CreateFailed,
    InFlightLimitExceeded,
    InvalidInput,
    NotAccepting,
    NotFound,
    StillRunning,
    StoreUnreachable,
)
from server.predictions.feed import ChangeFeed
from server.predictions.model import STARTING, CancelOutcome, ListFilter, Prediction, Preview
from server.predictions.models import ModelEntry
from server.predictions.progress import Progress, progress_of

log = logging.getLogger("server.routes.eachlabs")  # where create's failures were always logged

WAIT_FALLBACK_POLL_S = 0.5  # a waiter re-reads the row this often, told of a change or not
# `input` is stored and echoed in every answer; pydantic's JSON encoder gives up past 255 levels, so
# a deeper one would make each later read of the prediction (and the key's list) a 500.
MAX_INPUT_DEPTH = 32
MAX_ID_LENGTH = 64  # longer is no id of ours: not found, without asking the store
MAX_WEBHOOK_URL = 2048
MAX_WEBHOOK_SECRET = 1024


class PredictionRecords(Protocol):
    """What the service needs of the prediction store (server/store's PredictionStore has it)."""

    def create(self, prediction: Prediction, max_in_flight: int | None = None) -> None: ...
    def get(self, prediction_id: str) -> Prediction | None: ...
    def list(self, flt: ListFilter) -> tuple[list[Prediction], int]: ...
    def request_cancel(self, prediction_id: str) -> CancelOutcome: ...
    def delete(self, prediction_id: str) -> bool: ...
    def is_outage(self, exc: BaseException) -> bool: ...
    def is_unreachable(self, exc: BaseException) -> bool: ...
    def queue_position(self, prediction: Prediction) -> int | None: ...
    def preview_step(self, prediction_id: str) -> int | None: ...
    def get_preview(self, prediction_id: str) -> Preview | None: ...


class OutputFiles(Protocol):
    """What a delete needs of the output storage (server/outputs' OutputStorage has it)."""

    def delete(self, prediction_id: str) -> None: ...


class Readiness(abc.ABC):
    """Whether predictions can be taken and run, as the API sees it. In one process the worker
    supervisor answers; an API-only replica answers from what the worker hosts report."""

    @abc.abstractmethod
    def refusal(self, model: ModelEntry | None = None) -> NotAccepting | None:
        """Why no new prediction (for ``model``) is taken now, or None when they are. Without a
        model: the server as a whole (shutting down, every worker failed to load). With one,
        also that model: ModelUnavailable when its workers all failed to load, ModelNotServed
        when no live worker serves it."""

    @abc.abstractmethod
    def health(self) -> tuple[str, dict[str, Any]]:
        """/health-check's status (READY, BUSY, ...) and its details."""

    @property
    @abc.abstractmethod
    def serving_tiny_model(self) -> bool:
        """The tiny random-weights model serves: answers carry a warning."""

    @abc.abstractmethod
    def store_failed(self, exc: BaseException) -> None:
        """A request met a store failure (reported once in the log, shown in /health-check)."""

    @abc.abstractmethod
    def store_working(self) -> None:
        """A request's write went through: the store works (again)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Begin following what it reports on (called by the app's start-up)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop following (the app's shut-down)."""


@dataclass
class CreateRequest:
    """A create, in the domain's words (each contract builds one from its own body)."""

    owner: str
    model: ModelEntry
    input: Any  # the client's input object, as sent: stored and echoed back
    webhook_url: Any = None
    webhook_secret: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class PredictionService:
    def __init__(
        self,
        store: PredictionRecords,
        feed: ChangeFeed,
        readiness: Readiness,
        *,
        max_in_flight: int = 0,
        max_image_bytes: int | None = None,
        outputs: OutputFiles | None = None,
        clock: Callable[[], float] = time.time,
        activity: PredictionLog | None = None,
        previews_default: bool = False,
    ) -> None:
        """``max_in_flight``: predictions starting or processing per owner (0: unlimited);
        ``max_image_bytes``: the largest inline (data: URL) input image; ``outputs``: where a
        deleted prediction's images are removed from; ``previews_default``: whether a prediction
        that did not say gets live previews (``previews.enabled``)."""
        self.store = store
        self.feed = feed
        self.readiness = readiness
        self.max_in_flight = max_in_flight
        self.max_image_bytes = max_image_bytes
        self.outputs = outputs
        self._clock = clock
        self.activity = activity if activity is not None else PredictionLog()
        self.previews_default = previews_default

    # -- create -------------------------------------------------------------------------------
    def ensure_accepting(self, model: ModelEntry | None = None) -> None:
        """Raise NotAccepting (ModelUnavailable, ShuttingDown) when no prediction (for ``model``)
        is taken now."""
        refusal = self.readiness.refusal() if model is None else self.readiness.refusal(model)
        if refusal is not None:
            raise refusal

    def prepare(self, request: CreateRequest) -> Prediction:
        """The prediction a create would store: accepting checked, inputs validated and resolved.
        Raises NotAccepting or InvalidInput; stores nothing (``submit`` does)."""
        self.ensure_accepting(request.model)
        raw = request.input
        if raw is None:
            raise InvalidInput({"input": "required"})
        if _nested_deeper_than(raw, MAX_INPUT_DEPTH):
            raise InvalidInput({"input": f"nested deeper than {MAX_INPUT_DEPTH} levels"})
        try:
            inputs = request.model.resolve_inputs(raw)
        except InvalidInputs as exc:
            raise InvalidInput(exc.details) from None
        non_finite = _non_finite_fields(raw)
        if non_finite:
            raise InvalidInput(non_finite)
        # A data: URL's size is known now: refuse it here rather than store it and fail in the worker.
        if inputs.image and self.max_image_bytes is not None:
            too_large = data_url_size_problem(inputs.image, self.max_image_bytes)
            if too_large:
                raise InvalidInput({"image": too_large})
        webhook_url, webhook_secret = _checked_webhook(request.webhook_url, request.webhook_secret)
        return Prediction(
            id=str(uuid.uuid4()),
            owner=request.owner,
            model=request.model.slug,
            input=raw,
            params=inputs.model_dump(mode="json"),
            created_at=self._clock(),
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            extra=dict(request.extra),
        )

    async def submit(self, prediction: Prediction) -> Prediction:
        """Store a prepared prediction (queued) and tell the feed. Raises InFlightLimitExceeded,
        or CreateFailed when the store did not take it (nothing was made)."""
        limit = self.max_in_flight if self.max_in_flight > 0 else None
        try:
            await asyncio.to_thread(self.store.create, prediction, limit)
        except InFlightLimitExceeded:
            raise
        except Exception as exc:  # the store failed (disk full, database locked too long)
            if not self.store.is_outage(exc):
                log.exception("could not store a new prediction")
            self.readiness.store_failed(exc)  # an outage is logged once, when it begins
            if self.store.is_unreachable(exc):
                raise StoreUnreachable() from None
            raise CreateFailed("the prediction could not be stored; try again") from None
        self.readiness.store_working()
        self.feed.created(prediction.id)
        await self.activity.created(prediction)
        return prediction

    async def create(self, request: CreateRequest) -> Prediction:
        """``prepare`` then ``submit``, for a contract with nothing to check in between."""
        return await self.submit(self.prepare(request))

    # -- read -------------------------------------------------------------------------------
    async def read(self, prediction_id: str) -> Prediction | None:
        """The prediction whoever owns it (share pages, output files check their own rights)."""
        if len(prediction_id) > MAX_ID_LENGTH:
            return None
        return await asyncio.to_thread(self.store.get, prediction_id)

    async def get(self, owner: str, prediction_id: str) -> Prediction:
        """The owner's prediction; NotFound for none and for another owner's alike."""
        pred = await self.read(prediction_id)
        if pred is None or pred.owner != owner:
            raise NotFound(prediction_id)
        return pred

    async def wait_for_end(self, prediction_id: str, timeout: float) -> Prediction | None:
        """The prediction once terminal, or as it is after ``timeout`` seconds; holds no thread.
        Woken by the feed, re-reading the row at least every WAIT_FALLBACK_POLL_S regardless."""
        deadline = time.monotonic() + timeout
        while True:
            pred = await asyncio.to_thread(self.store.get, prediction_id)
            remaining = deadline - time.monotonic()
            if pred is None or pred.terminal or remaining <= 0:
                return pred
            await self.feed.wait(prediction_id, min(remaining, WAIT_FALLBACK_POLL_S))

    async def list(self, flt: ListFilter) -> tuple[list[Prediction], int]:
        """The filter's owner's predictions, newest first, and how many match in all."""
        return await asyncio.to_thread(self.store.list, flt)

    # -- progress ---------------------------------------------------------------------------
    async def progress(self, pred: Prediction) -> Progress | None:
        """Where a prediction stands (queue place, steps, times, preview); None once it ended."""
        if pred.terminal:
            return None
        if pred.status == STARTING:
            position = await asyncio.to_thread(self.store.queue_position, pred)
            return progress_of(pred, self._clock(), queue_position=position)
        if not pred.wants_previews(self.previews_default):  # no preview to look for: one read less
            return progress_of(pred, self._clock())
        preview_step = await asyncio.to_thread(self.store.preview_step, pred.id)
        return progress_of(pred, self._clock(), preview_step=preview_step)

    async def preview(self, owner: str, prediction_id: str) -> Preview | None:
        """The owner's prediction's newest live preview: None when there is none (yet, or any
        more: previews are dropped when the prediction ends); NotFound for no such prediction."""
        await self.get(owner, prediction_id)
        return await asyncio.to_thread(self.store.get_preview, prediction_id)

    # -- cancel -----------------------------------------------------------------------------
    async def cancel(self, owner: str, prediction_id: str) -> CancelOutcome:
        """Cancel the owner's prediction: a queued one ends now (CANCELLED), a running one is
        asked to stop at its next step (REQUESTED). Raises NotFound, or AlreadyFinished with the
        status it ended with (it may have ended since the caller last read it)."""
        pred = await self.get(owner, prediction_id)
        outcome = await asyncio.to_thread(self.store.request_cancel, prediction_id)
        if outcome is CancelOutcome.NOT_FOUND:
            raise NotFound(prediction_id)
        if outcome is CancelOutcome.ALREADY_FINISHED:
            ended = await asyncio.to_thread(self.store.get, prediction_id) or pred
            raise AlreadyFinished(ended.status)
        if outcome is CancelOutcome.REQUESTED:
            self.feed.cancel_requested(prediction_id)
        else:  # ended here, not in a worker: its end is told like any other (webhooks)
            self.feed.ended(prediction_id)
            ended = await asyncio.to_thread(self.store.get, prediction_id)
            if ended is not None:
                await self.activity.ended(ended)
        return outcome

    # -- delete -------------------------------------------------------------------------------
    async def delete(self, owner: str, prediction_id: str) -> None:
        """Remove the owner's ended prediction: its images first (a failure there leaves the row,
        so the delete can be tried again), then its row. Raises NotFound (none, or another
        owner's), or StillRunning while it is queued or running."""
        pred = await self.get(owner, prediction_id)
        if not pred.terminal:
            raise StillRunning(pred.status)
        if self.outputs is not None:
            await asyncio.to_thread(self.outputs.delete, prediction_id)
        if not await asyncio.to_thread(self.store.delete, prediction_id):
            raise NotFound(prediction_id)  # deleted meanwhile by another request


# -- input checks the input model cannot make -------------------------------------------------


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists/objects in ``value`` nest more than ``limit`` levels (``value`` itself is level 1)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _non_finite_fields(value: dict[str, Any]) -> dict[str, str]:
    """Fields of ``input`` holding NaN or an infinity anywhere inside (JSON's ``NaN``, ``Infinity``,
    ``1e999``). Stored, they would make every later JSON answer carrying the input a 500."""
    bad = {}
    for name, item in value.items():
        stack = [item]
        while stack:
            current = stack.pop()
            if isinstance(current, float) and not math.isfinite(current):
                bad[str(name)] = "must be a finite number"
                break
            if isinstance(current, dict):
                stack.extend(current.values())
            elif isinstance(current, list):
                stack.extend(current)
    return bad


def _checked_webhook(url: Any, secret: Any) -> tuple[str | None, str | None]:
    fields = {}
    if url is not None and url != "":
        is_http_url = isinstance(url, str) and re.match(r"(?i)https?://[^\s/]+", url)
        if not is_http_url or len(url) > MAX_WEBHOOK_URL:
            fields["webhook_url"] = "must be an http(s) URL"
    else:
        url = None
    if secret is not None and (not isinstance(secret, str) or len(secret) > MAX_WEBHOOK_SECRET):
        fields["webhook_secret"] = f"must be a string of at most {MAX_WEBHOOK_SECRET} characters"
    if fields:
        raise InvalidInput(fields)
    return url, secret
