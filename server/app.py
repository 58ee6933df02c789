"""The FastAPI application factory.

``create_app(settings)`` takes the parts ``server.services`` builds from the settings (store, key
ring, rate limits, output storage, change feed, models, prediction service, webhooks, workers),
starts and stops them in order, and mounts the routes. Tests pass their own settings; the CLI's
`serve` passes the loaded config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from server.api import openapi
from server.api.errors import install_error_handlers
from server.api.middleware.blank_query import BlankQueryMiddleware
from server.api.middleware.body_limit import BodySizeLimitMiddleware
from server.api.middleware.hostguard import HostGuardMiddleware, HostPolicy
from server.api.openai import errors as openai_errors
from server.config import Settings
from server.datalock import ServerLock
from server.outputs.base import OutputStorageError
from server.services import AppState, build_state
from server.store import PredictionStore
from server.store.health import describe
from server.summary import summary_lines

log = logging.getLogger("fluxserve")

RETENTION_SWEEP_S = 300.0
# How often the WAL is folded into the database file while the server runs (see _checkpoint_loop).
CHECKPOINT_INTERVAL_S = 60.0


async def _finish_in_thread(func, *args):
    """``func(*args)`` in a thread; a cancel waits for it to return before it propagates, so
    nothing started here still runs once the task is done (and what the stop does next, such
    as its own checkpoint, never races it)."""
    work = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise


async def _retention_loop(state: AppState) -> None:
    """Delete output files older than retention_hours; the predictions keep their status."""
    hours = state.settings.outputs.retention_hours
    while True:
        cutoff = time.time() - hours * 3600
        try:
            expired = await _finish_in_thread(state.store.finished_before, cutoff)
            removed = 0
            for pred in expired:
                try:
                    await _finish_in_thread(state.outputs.delete, pred.id)
                except OutputStorageError as exc:  # the bucket cannot be reached: the next sweep
                    log.warning("retention: could not remove outputs now (%s); trying again later", exc)
                    break
                await _finish_in_thread(state.store.mark_data_removed, pred.id)
                removed += 1
            if removed:
                log.info("retention: removed the outputs of %d predictions", removed)
        except Exception:  # noqa: BLE001 - retry on the next sweep
            log.exception("retention sweep failed")
        await asyncio.sleep(min(RETENTION_SWEEP_S, max(1.0, hours * 3600 / 10)))


async def _checkpoint_loop(state: AppState) -> None:
    """Fold the WAL into the database file now and then, so the file alone holds (nearly) every
    row: a backup of the file, or a lost -wal, then loses little. It never waits for a lock:
    what readers still need stays for the next round. A failure (the disk is full) is the
    store's: /health-check reports it and the log has one line when it starts, not one a round."""
    while True:
        await asyncio.sleep(CHECKPOINT_INTERVAL_S)
        try:
            await _finish_in_thread(state.store.checkpoint, "TRUNCATE", 0)
        except Exception as exc:  # noqa: BLE001 - retry on the next round
            state.readiness.store_failed(exc)


def _checkpoint_at_stop(store: PredictionStore) -> None:
    """At a clean stop the database file must hold every row and the WAL be empty."""
    try:
        if not store.checkpoint("TRUNCATE", 5_000):
            log.warning("database checkpoint at stop was incomplete: keep the -wal file with the database")
    except Exception:  # noqa: BLE001 - the rows are still safe in the WAL
        log.exception("database checkpoint at stop failed: keep the -wal file with the database")


def _check_store(state: AppState) -> str | None:
    """A warning when the output storage holds images of predictions the store does not know:
    the database was replaced, restored from an older backup, or lost its -wal file."""
    outputs_place = getattr(state.outputs, "root", None) or repr(state.outputs)
    try:
        ids = state.outputs.stored_ids()
        missing = state.store.unknown_ids(ids)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - an unreadable folder or a busy store: the check only warns
        log.warning(
            "could not compare the outputs folder %s with the database %s (%s); starting without that check",
            outputs_place,
            state.settings.store_name,
            describe(exc),
        )
        return None
    if not missing:
        return None
    return (
        f"the database {state.settings.store_name} has no record of {len(missing)} of the {len(ids)} "
        f"predictions whose images are in {outputs_place} (e.g. {missing[0]}); their clients get 404. "
        "The database was replaced, restored from an older backup, or lost its -wal file: "
        "stop the server and restore the latest backup (README, Operations) unless that was intended"
    )


async def _stop_workers(state: AppState) -> None:
    await state.supervisor.drain(state.settings.workers.shutdown_grace_s)
    await state.supervisor.stop()


async def _cancel_all(tasks: list[asyncio.Task]) -> None:
    """Cancel the background loops and wait until they have ended (with what they ran in threads)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def create_app(
    settings: Settings,
    store: PredictionStore | None = None,
    start_workers: bool = True,
    lock: ServerLock | None = None,
) -> FastAPI:
    """``lock``: the server's locks, when the caller took them already (`fluxserve serve`)."""
    state = build_state(settings, store, lock, run_workers=start_workers)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.keyring.open:
            log.warning(
                "no API key configured: the server is open to anyone who can reach %s "
                "(loopback Host names only, no cross-site writes)",
                settings.base_url,
            )
        # Each part that starts registers its own stop, so a failure half-way through start-up
        # (or in one stop) still stops the rest and releases the data folder.
        async with contextlib.AsyncExitStack() as stack:
            if start_workers:
                state.lock.acquire()  # before restart recovery: never settle another live server's jobs
            stack.callback(state.lock.release)
            stack.callback(_checkpoint_at_stop, state.store)  # after every other stop, under the lock
            stack.callback(state.store.close)
            state.store_warning = await asyncio.to_thread(_check_store, state)
            if state.store_warning:
                log.warning("%s", state.store_warning)
            await state.webhooks.start()
            stack.push_async_callback(state.webhooks.stop)
            # The feed runs from before the workers start (restart recovery tells of ends) until
            # they have stopped, and hands what it was told to the webhooks before they stop.
            await state.feed.start()
            stack.push_async_callback(state.feed.stop)
            await state.readiness.start()
            stack.push_async_callback(state.readiness.stop)
            if start_workers:
                stack.push_async_callback(_stop_workers, state)
                await state.supervisor.start()
                if state.heartbeat is not None:  # a store other hosts share: they read its reports
                    await state.heartbeat.start()
                    stack.push_async_callback(state.heartbeat.stop)
            stored_keys = await asyncio.to_thread(state.keyring.stored_keys)
            for line in summary_lines(state, runs_workers=start_workers, stored_keys=stored_keys):
                log.info("%s", line)
            if settings.outputs.retention_hours > 0:
                state.background.append(asyncio.create_task(_retention_loop(state)))
            state.background.append(asyncio.create_task(_checkpoint_loop(state)))
            stack.push_async_callback(_cancel_all, state.background)
            yield

    # /docs and /redoc load Swagger UI and ReDoc from files the fastapi-offline package ships
    # (served under /static-offline-docs), not from a CDN: the pages work without internet.
    app = FastAPIOffline(
        swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        title="fluxserve",
        version="0.1.0",
        summary="Self-hosted FLUX.1 [dev] behind the Eachlabs prediction contract.",
        description=(
            "Create a prediction, poll it until `success`, fetch the image URLs. "
            "Authenticate with `X-API-Key: KEY` or `Authorization: Bearer KEY` (the Authorize button). "
            f"Limits per key: {settings.limits.requests_per_minute} creates per minute, "
            f"{settings.limits.max_in_flight} predictions in flight; past either, 429 with Retry-After."
        ),
        lifespan=lifespan,
    )
    app.state.fluxserve = state
    app.router.redirect_slashes = False  # both slash forms are routed explicitly; a 307 breaks clients
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.limits.max_body_bytes,
        bodies_by_prefix=openai_errors.TOO_LARGE_BY_PREFIX,
    )
    app.add_middleware(BlankQueryMiddleware)
    # Outermost (added last): a refused Host or cross-site write is answered before anything else.
    policy = HostPolicy.from_settings(
        settings.server.allowed_hosts, settings.public_url, tls_enabled=settings.tls.enabled
    )
    app.add_middleware(HostGuardMiddleware, policy=policy, keyring=state.keyring)
    install_error_handlers(app)
    openapi.install(app)  # document what the handlers answer (400s, hand-parsed bodies)

    from server.api import health, outputs
    from server.api.eachlabs import routes as eachlabs
    from server.api.openai import routes as openai_images
    from server.api.playground import routes as playground
    from server.api.replicate import routes as replicate

    for module in (eachlabs, outputs, health, replicate, openai_images, playground):
        app.include_router(module.router)
    return app
