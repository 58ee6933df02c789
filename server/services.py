"""Building the server's parts from Settings, and joining them through the change feed.

One place picks the implementations (the backend ``store_url`` names with its change feed, the
output storage) and makes the subscriptions that replace direct calls between parts:

- ``created`` wakes the worker supervisor; ``cancel requested`` reaches the job that runs it;
- ``changed`` and ``ended`` drive the webhooks (an end is re-read from the store: the
  notification is a hint).

The API reads the parts through ``AppState`` (``server.api.deps.app_state``). Three roles: the
app with its workers (`serve`), the app alone on a shared store (`serve --no-workers`: readiness
from the worker hosts' heartbeats), and ``WorkerHost`` (`fluxserve worker`: no HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from server.api.context import RenderContext
from server.auth.keyring import KeyRing
from server.auth.ratelimit import RequestRateLimiter
from server.config import Settings
from server.datalock import ServerLock
from server.metrics import ServerMetrics
from server.outputs import open_output_storage
from server.outputs.base import OutputStorage
from server.predictions.activity import PredictionLog
from server.predictions.errors import ModelNotServed, ModelUnavailable, NotAccepting, ShuttingDown
from server.predictions.feed import Change, ChangeFeed, ChangeKind
from server.predictions.models import ModelEntry, ModelRegistry
from server.predictions.service import PredictionService, Readiness
from server.store import Backend, PredictionStore, open_backend
from server.webhooks.dispatcher import WebhookDispatcher
from server.workers.hosts import HostHeartbeat, HostsReadiness
from server.workers.supervisor import SETUP_FAILED, W_FAILED, Supervisor


@dataclass
class AppState:
    """Everything a request may need, built once per app."""

    settings: Settings
    store: PredictionStore
    keyring: KeyRing
    create_limiter: RequestRateLimiter
    read_limiter: RequestRateLimiter
    outputs: OutputStorage
    feed: ChangeFeed
    models: ModelRegistry
    predictions: PredictionService
    readiness: Readiness
    render: RenderContext
    metrics: ServerMetrics
    webhooks: WebhookDispatcher
    supervisor: Supervisor  # this process's workers (started only when the app runs workers)
    lock: ServerLock
    heartbeat: HostHeartbeat | None = None  # this process's workers' reports, on a shared store
    started_at: float = field(default_factory=time.time)
    background: list[asyncio.Task] = field(default_factory=list)
    store_warning: str | None = None  # set at start when the store misses predictions (app._check_store)

    @property
    def base_url(self) -> str:
        return self.settings.base_url


class SupervisorReadiness(Readiness):
    """Readiness as this process's worker supervisor knows it. ``others_may_serve``: the store
    is shared, so a model none of this process's workers serve may be served by another host."""

    def __init__(self, supervisor: Supervisor, *, others_may_serve: bool = False) -> None:
        self.supervisor = supervisor
        self.others_may_serve = others_may_serve

    def refusal(self, model: ModelEntry | None = None) -> NotAccepting | None:
        status, details = self.supervisor.health()
        if status == SETUP_FAILED:
            return ModelUnavailable(details.get("reason"))
        if not self.supervisor.accepting:
            return ShuttingDown()
        if model is None or not self.supervisor.slots:  # no worker here at all: jobs queue, as ever
            return None
        slots = self.supervisor.slots_of(model.spec_name)
        if not slots:
            if self.others_may_serve:
                return None
            return ModelNotServed(model.slug, "no worker of this server serves it")
        if all(slot.state == W_FAILED for slot in slots):
            errors = sorted({slot.setup_error or "unknown" for slot in slots})
            return ModelUnavailable("; ".join(errors), model.slug)
        return None

    def health(self) -> tuple[str, dict[str, Any]]:
        return self.supervisor.health()

    @property
    def serving_tiny_model(self) -> bool:
        return self.supervisor.serving_tiny_model

    def store_failed(self, exc: BaseException) -> None:
        self.supervisor.store_failed(exc)

    def store_working(self) -> None:
        self.supervisor.store_working()


def subscribe_workers(feed: ChangeFeed, supervisor: Supervisor) -> None:
    """A new prediction wakes the dispatcher; a cancel reaches the worker running the job (the
    supervisor also re-reads cancel flags on its own, for cancels told on no feed)."""
    feed.subscribe([ChangeKind.CREATED], lambda change: supervisor.wake())
    feed.subscribe([ChangeKind.CANCEL_REQUESTED], lambda change: supervisor.cancel(change.prediction_id))


def subscribe_webhooks(feed: ChangeFeed, store: PredictionStore, webhooks: WebhookDispatcher) -> None:
    """Replicate's start/logs events follow changes; the end's webhook is queued from the row."""

    async def ended(change: Change) -> None:
        pred = await asyncio.to_thread(store.get, change.prediction_id)
        if pred is not None and pred.terminal:
            webhooks.on_finished(pred)

    feed.subscribe([ChangeKind.CHANGED], lambda change: webhooks.on_change(change.prediction_id))
    feed.subscribe([ChangeKind.ENDED], ended)


def server_lock(settings: Settings) -> ServerLock:
    """The locks a server holds. On SQLite: its data folder, its database file and its outputs
    folder (one server each). On a shared store (PostgreSQL) only the data folder: API replicas
    and worker hosts share the database and maybe an outputs mount on purpose, but the data
    folder's lock still keeps two worker hosts from running under one host id (a host settles
    its own host id's jobs at start, which must never be another live process's)."""
    if settings.shared_store:
        return ServerLock(settings.data_path, None)
    return ServerLock(settings.data_path, settings.db_path, settings.local_outputs_path)


def build_state(
    settings: Settings,
    store: PredictionStore | None = None,
    lock: ServerLock | None = None,
    *,
    run_workers: bool = True,
) -> AppState:
    """Every part, built and joined; nothing started (the app's lifespan starts them).
    ``run_workers``: this process runs workers; without, on a shared store, readiness comes from
    the worker hosts' reports."""
    settings.data_path.mkdir(parents=True, exist_ok=True)
    backend = open_backend(settings.resolved_store_url, predictions=store)
    store = backend.predictions
    feed = backend.feed
    outputs = open_output_storage(settings)
    models = ModelRegistry.from_settings(settings)
    render = RenderContext(settings.base_url, outputs, models)
    metrics = ServerMetrics()
    webhooks = WebhookDispatcher(settings, store, backend.deliveries, render=render)
    keyring = KeyRing(settings.api_keys, backend.keys)
    activity = PredictionLog(keyring)  # the operator's line per create, start and end
    supervisor = Supervisor(
        settings,
        store,
        outputs,
        notify=feed.changed,
        on_finished=lambda pred: feed.ended(pred.id),
        observe_predict_time=metrics.predict_time.observe,
        models=models,
        activity=activity,
        observe_idle_gap=metrics.idle_gap.observe,
    )
    subscribe_workers(feed, supervisor)
    subscribe_webhooks(feed, store, webhooks)
    readiness: Readiness
    heartbeat = None
    if store.shared and not run_workers:
        readiness = HostsReadiness(store, models, lambda: supervisor.accepting)
    else:
        readiness = SupervisorReadiness(supervisor, others_may_serve=store.shared)
    if store.shared and run_workers:
        heartbeat = HostHeartbeat(store, supervisor)
    predictions = PredictionService(
        store,
        feed,
        readiness,
        max_in_flight=settings.limits.max_in_flight,
        max_image_bytes=settings.input_images.max_bytes,
        outputs=outputs,
        activity=activity,
        previews_default=settings.previews.enabled,
    )
    metrics.bind(store, supervisor)
    return AppState(
        settings=settings,
        store=store,
        keyring=keyring,
        create_limiter=RequestRateLimiter(settings.limits.requests_per_minute, settings.limits.storage_uri),
        read_limiter=RequestRateLimiter(settings.limits.reads_per_minute, settings.limits.storage_uri),
        outputs=outputs,
        feed=feed,
        models=models,
        predictions=predictions,
        readiness=readiness,
        render=render,
        metrics=metrics,
        webhooks=webhooks,
        supervisor=supervisor,
        lock=lock or server_lock(settings),
        heartbeat=heartbeat,
    )


@dataclass
class WorkerHost:
    """A worker host without HTTP (`fluxserve worker`): the supervisor and its jobs, the change
    feed (creates wake it, cancels reach its jobs) and the heartbeat API replicas read. Ends reach
    the API replicas through the store's notifications; they queue the durable webhooks. The
    best-effort ones (Replicate's start and logs) follow progress, which only this host sees: it
    sends those itself."""

    settings: Settings
    backend: Backend
    outputs: OutputStorage
    supervisor: Supervisor
    heartbeat: HostHeartbeat
    webhooks: WebhookDispatcher  # Replicate's start/logs events of the jobs run here

    async def start(self) -> None:
        await self.backend.feed.start()
        await self.webhooks.start(durable=False)
        await self.supervisor.start()
        await self.heartbeat.start()

    async def drain(self, grace_s: float) -> None:
        """Take no new job; let the running ones finish within ``grace_s``."""
        self.supervisor.accepting = False
        with contextlib.suppress(Exception):  # API replicas see it draining at once
            await self.heartbeat.beat()
        await self.supervisor.drain(grace_s)

    async def stop(self) -> None:
        try:
            await self.heartbeat.stop()
            await self.supervisor.stop()
            await self.webhooks.stop()
            await self.backend.feed.stop()
        finally:
            self.backend.close()


def build_worker_host(settings: Settings, backend: Backend) -> WorkerHost:
    """A worker host's parts on an opened (shared) backend; nothing started."""
    outputs = open_output_storage(settings)
    models = ModelRegistry.from_settings(settings)
    supervisor = Supervisor(
        settings,
        backend.predictions,
        outputs,
        notify=backend.feed.changed,
        models=models,
        activity=PredictionLog(KeyRing(settings.api_keys, backend.keys)),
    )
    subscribe_workers(backend.feed, supervisor)
    webhooks = WebhookDispatcher(
        settings,
        backend.predictions,
        backend.deliveries,
        render=RenderContext(settings.base_url, outputs, models),
    )
    backend.feed.subscribe([ChangeKind.CHANGED], lambda change: webhooks.on_change(change.prediction_id))
    heartbeat = HostHeartbeat(backend.predictions, supervisor)
    return WorkerHost(settings, backend, outputs, supervisor, heartbeat, webhooks)
