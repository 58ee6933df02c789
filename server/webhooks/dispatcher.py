"""Webhooks: telling a client's URL that its prediction changed, off the request path.

The end of a prediction is a durable delivery (a row, retried, kept across restarts); Replicate's
``start`` and ``logs`` events are best effort, from memory. The Eachlabs flavour sends its small
body with ``X-Webhook-Secret``; the Replicate flavour sends the prediction object signed the
Standard Webhooks way with the owner's secret. The blocking work (the store, ``post_json``) runs in
threads; the dispatcher lives on the API process's event loop (the wiring subscribes its hooks to
the change feed's ``ended`` and ``changed``). What is sent, when, and how it is
signed: docs/webhooks.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from server.api.context import RenderContext
from server.api.replicate.render import API, DEFAULT_EVENTS, prediction_object
from server.egress.fetch import AddressPolicy, FetchError, post_json
from server.predictions.feed import wait_event
from server.predictions.model import ERROR, PROCESSING, SUCCESS, Prediction
from server.store import open_delivery_store
from server.store.base import PredictionStore
from server.store.deliveries import DELIVERED, FAILED, PENDING, Delivery, DeliveryStore

log = logging.getLogger("fluxserve.webhooks")

EACHLABS, REPLICATE = "eachlabs", "replicate"
EVENT_FINISHED = "finished"  # the Eachlabs end-of-prediction webhook
THROTTLE_S = 0.5  # Replicate: logs/output events at most once every 500 ms
POLL_S = 5.0  # the loop looks for due rows at least this often (rows written by other processes)
MAX_IN_FLIGHT = 16  # deliveries posted at the same time
LEASE_MARGIN_S = 30.0  # a claimed row is hidden from other processes for timeout_s + this
STOP_GRACE_S = 2.0  # on stop, how long attempts in flight may take to finish
KEEP_FINISHED_S = 7 * 24 * 3600  # delivered/failed rows are pruned after this
# At start, ends this recent without a delivery row get one (the process died between writing
# the end and its delivery). Well inside KEEP_FINISHED_S: a pruned row is never sent again.
SWEEP_WINDOW_S = 24 * 3600
MIN_PUT_OFF_S = 1.0  # a delivery the database could not sign waits interval_s, at least this
IGNORED_CACHE = 4096  # predictions known to need no progress events (an LRU)


def standard_webhook_signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`` under a ``whsec_`` secret."""
    key = base64.b64decode(secret.split("_", 1)[1] if secret.startswith("whsec_") else secret)
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def wire_body(payload: Any) -> str:
    """The exact body ``post_json`` sends for ``payload`` (what the signature covers)."""
    return json.dumps(payload, separators=(",", ":"))


def display_url(url: str) -> str:
    """A webhook URL for logs: its origin only (paths and queries often carry tokens)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "(invalid URL)"
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    port = f":{parsed.port}" if parsed.port else ""
    rest = "/..." if parsed.path not in ("", "/") or parsed.query else "/"
    return f"{parsed.scheme}://{host}{port}{rest}"


def _scrub(message: str, url: str) -> str:
    """Drop the URL's path from an error message (fetching shows scheme://host/path)."""
    try:
        path = httpx.URL(url).path
    except (httpx.InvalidURL, TypeError, ValueError):
        return message
    return message.replace(path, "/...") if len(path) > 1 else message


def _is_refusal(exc: FetchError) -> bool:
    """A refusal by the address policy (or a URL that can never work): retrying cannot help."""
    text = str(exc)
    return text.startswith("webhook URL refused") or "is not a valid URL" in text


def eachlabs_payload(ctx: RenderContext, pred: Prediction) -> dict[str, Any]:
    urls = ctx.output_urls(pred)
    return {
        "exec_id": pred.id,
        "flow_id": None,
        "status": "succeeded" if pred.status == SUCCESS else "failed",
        "output": {"url": urls[0] if urls else None},
        "error": "" if pred.status == SUCCESS else (pred.error or "prediction failed"),
    }


def events_of(pred: Prediction) -> set[str]:
    return set(pred.extra.get("webhook_events_filter") or DEFAULT_EVENTS)


@dataclass
class _Follow:
    """In-memory progress of one Replicate prediction's best-effort events."""

    dirty: bool = False
    started_sent: bool = False
    last_logs: str | None = None
    last_sent: float = float("-inf")
    task: asyncio.Task | None = None


class WebhookDispatcher:
    def __init__(
        self,
        settings,
        store: PredictionStore,
        deliveries: DeliveryStore | None = None,
        *,
        render: RenderContext,
    ) -> None:
        """``render``: what payloads link to (output URLs, model names), as the API answers."""
        self.settings = settings
        self.store = store
        self.render = render
        self.deliveries = deliveries or open_delivery_store(settings.resolved_store_url)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._in_flight: dict[str, asyncio.Task] = {}
        self._pending_enqueues: set[asyncio.Task] = set()
        self._follows: dict[str, _Follow] = {}
        self._ignored: OrderedDict[str, None] = OrderedDict()
        self._send_slots: asyncio.Semaphore | None = None
        # POSTs block a thread for up to timeout_s: on threads of their own, so a slow receiver
        # never holds up the store calls that share the loop's default executor.
        self._post_pool: ThreadPoolExecutor | None = None
        self._stopping = False
        self._signing_outage = False  # the warning about an outage is logged once

    # -- settings ---------------------------------------------------------------------------
    @property
    def policy(self) -> AddressPolicy:
        images = self.settings.input_images
        return AddressPolicy(
            allow_private=images.allow_private_addresses,
            allowed_hosts=list(images.allowed_hosts),
            timeout_s=self.settings.webhooks.timeout_s,
        )

    def signing_secret(self, owner: str) -> str:
        """``owner``'s ``whsec_`` secret (made on first use, kept in the database). Blocking.

        Not cached: a rotation by another process (the CLI) takes effect on the next delivery."""
        return self.deliveries.signing_secret(owner)

    def rotate_signing_secret(self, owner: str) -> str:
        """Give ``owner`` a new secret and return it; the old one signs nothing more. Blocking."""
        return self.deliveries.rotate_signing_secret(owner)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self, *, durable: bool = True) -> None:
        """``durable=False``: only the best-effort events (Replicate's ``start`` and ``logs``) of
        the predictions this process runs; the durable deliveries are an API replica's work (a
        worker host without HTTP)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._send_slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._stopping = False
        if not durable:
            return
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.deliveries.prune, time.time() - KEEP_FINISHED_S)
        try:
            await asyncio.to_thread(self.enqueue_missed_ends)
        except Exception:  # noqa: BLE001 - a webhook must never stop the server from starting
            log.exception("looking for webhooks missed by the last run")
        self._task = asyncio.create_task(self._run(), name="webhook-deliveries")

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Finish writing the rows of ends just reported, give attempts in flight ``grace_s``,
        then stop. Attempts cut short stay pending for the next start."""
        if self._pending_enqueues:
            await asyncio.wait(list(self._pending_enqueues), timeout=grace_s)
        self._stopping = True  # the loop checks this too, in case a cancellation is lost
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=grace_s)
        for follow in self._follows.values():
            if follow.task is not None:
                follow.task.cancel()
        self._follows.clear()
        tasks = list(self._in_flight.items())
        if tasks:
            await asyncio.wait([t for _, t in tasks], timeout=grace_s)
        for delivery_id, task in tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.deliveries.release, delivery_id)
        if self._post_pool is not None:
            self._post_pool.shutdown(wait=False, cancel_futures=True)
            self._post_pool = None
        self.deliveries.close()

    async def _post(self, url: str, payload: Any, headers: dict[str, str]) -> int:
        """POST on the webhook threads (made on first use); the HTTP status (FetchError when
        refused or failed)."""
        if self._post_pool is None:
            self._post_pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="webhook-post")
        call = functools.partial(
            post_json, url, payload, headers, self.policy, self.settings.webhooks.timeout_s
        )
        return await asyncio.get_running_loop().run_in_executor(self._post_pool, call)

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run ``fn(*args)`` on the dispatcher's loop (now, when called from it). False when the
        dispatcher is not running."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._stopping:
            return False
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)
        return True

    # -- the end of a prediction (durable) ---------------------------------------------------
    def on_finished(self, pred: Prediction) -> None:
        """``pred`` just reached a terminal status (the feed's ``ended``). Any thread."""
        if not pred.webhook_url:
            self._on_loop(self._forget, pred.id)
            return
        if not self._on_loop(self._schedule_enqueue, pred):
            # Not running (shutdown): write the row now; the next start sends it.
            try:
                self.enqueue_finished_sync(pred)
            except Exception:  # noqa: BLE001 - a webhook must never break the caller
                log.exception("could not queue the webhook of prediction %s", pred.id)

    def _schedule_enqueue(self, pred: Prediction) -> None:
        self._forget(pred.id)
        task = asyncio.get_running_loop().create_task(self.enqueue_finished(pred))
        self._pending_enqueues.add(task)
        task.add_done_callback(self._pending_enqueues.discard)

    async def enqueue_finished(self, pred: Prediction) -> str | None:
        try:
            delivery_id = await asyncio.to_thread(self.enqueue_finished_sync, pred)
        except Exception:  # noqa: BLE001 - a webhook must never break the caller
            log.exception("could not queue the webhook of prediction %s", pred.id)
            return None
        if delivery_id is not None and self._wake is not None:
            self._wake.set()
        return delivery_id

    def enqueue_finished_sync(self, pred: Prediction) -> str | None:
        """Write the delivery row this end calls for (None when it calls for none, or when the
        row already exists)."""
        if not pred.webhook_url or not pred.terminal:
            return None
        if pred.extra.get("api") == API:
            events = events_of(pred)
            event = (
                "completed"
                if "completed" in events
                else ("output" if "output" in events and pred.status == SUCCESS else None)
            )
            if event is None:
                return None
            payload = prediction_object(self.render, pred)
            return self.deliveries.enqueue(pred.id, event, REPLICATE, pred.webhook_url, payload)
        if pred.status not in (SUCCESS, ERROR):
            return None  # the contract: no webhook on cancel
        headers = {"X-Webhook-Secret": pred.webhook_secret} if pred.webhook_secret else {}
        payload = eachlabs_payload(self.render, pred)
        return self.deliveries.enqueue(pred.id, EVENT_FINISHED, EACHLABS, pred.webhook_url, payload, headers)

    def enqueue_missed_ends(self, now: float | None = None) -> int:
        """Write the delivery rows of recent ends that have none: the last process died after
        recording the end and before its webhook row. Returns how many were written."""
        now = time.time() if now is None else now
        ended = self.store.ended_with_webhook_since(now - SWEEP_WINDOW_S)
        if not ended:
            return 0
        have = self.deliveries.with_deliveries(ended)
        written = 0
        for prediction_id in ended:
            if prediction_id in have:
                continue
            pred = self.store.get(prediction_id)
            if pred is not None and self.enqueue_finished_sync(pred) is not None:
                log.info(
                    "prediction %s: its webhook was not queued before the last stop; queued now", pred.id
                )
                written += 1
        return written

    # -- the delivery loop ------------------------------------------------------------------
    def wake(self) -> None:
        if self._wake is not None:
            self._on_loop(self._wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        lease = self.settings.webhooks.timeout_s + LEASE_MARGIN_S
        while not self._stopping:
            self._wake.clear()
            next_due: float | None = None
            try:
                room = MAX_IN_FLIGHT - len(self._in_flight)
                due = await asyncio.to_thread(self.deliveries.claim_due, lease, room) if room > 0 else []
                for delivery in due:
                    task = asyncio.create_task(self._attempt(delivery), name=f"webhook-{delivery.id}")
                    self._in_flight[delivery.id] = task
                    task.add_done_callback(lambda _t, i=delivery.id: self._in_flight.pop(i, None))
                next_due = await asyncio.to_thread(self.deliveries.next_due_at)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a locked database now is not a reason to stop for good
                log.exception("webhook delivery loop")
            delay = POLL_S if next_due is None else min(POLL_S, max(0.0, next_due - time.time()))
            if delay > 0:
                await wait_event(self._wake, delay)

    async def _attempt(self, delivery: Delivery) -> None:
        cfg = self.settings.webhooks
        number = delivery.attempts + 1
        total = max(cfg.attempts, number)
        headers = dict(delivery.headers)
        refused = False
        code: int | None = None
        error: str | None = None
        try:
            if delivery.flavour == REPLICATE:
                # Signed before the attempt counts: a database that cannot give the secret now
                # says nothing about the receiver, so it must not use up the delivery's attempts.
                try:
                    signer = await asyncio.to_thread(self._signer_of, delivery.prediction_id)
                    headers.update(await self._signature_headers(signer, delivery.id, delivery.payload))
                except Exception as exc:
                    if not self._is_store_outage(exc):
                        raise
                    await self._put_off(delivery, exc)
                    return
                self._signing_recovered()
            async with self._slots():
                code = await self._post(delivery.url, delivery.payload, headers)
        except FetchError as exc:
            refused = _is_refusal(exc)
            error = _scrub(str(exc), delivery.url)
        except Exception as exc:  # noqa: BLE001 - recorded like any failed attempt
            error = f"{type(exc).__name__}: {exc}"
        where = f"Webhook delivery {number}/{total}"
        if delivery.flavour == REPLICATE:
            where += f" ({delivery.event})"
        where += f" to {display_url(delivery.url)}"
        now = time.time()
        if code is not None and 200 <= code < 300:
            state, note, next_at = DELIVERED, f"{where}: delivered (HTTP {code})", None
        else:
            outcome = f"HTTP {code}" if code is not None else error or "failed"
            if refused:
                state, note, next_at = FAILED, f"{where}: {outcome}; not retried", None
            elif number >= cfg.attempts:
                state, note, next_at = FAILED, f"{where}: {outcome}; giving up", None
            else:
                state, next_at = PENDING, now + cfg.interval_s
                note = f"{where}: {outcome}; next attempt in {cfg.interval_s:g} s"
            error = outcome
        log.info("prediction %s: %s", delivery.prediction_id, note)
        try:
            await asyncio.to_thread(
                self.deliveries.record_attempt,
                delivery.id,
                number,
                state,
                next_attempt_at=next_at,
                error=error,
            )
            await asyncio.to_thread(self.store.append_note, delivery.prediction_id, note + "\n")
        except Exception:  # noqa: BLE001
            log.exception("could not record webhook delivery %s", delivery.id)
        if self._wake is not None:
            self._wake.set()

    def _slots(self) -> asyncio.Semaphore:
        if self._send_slots is None:
            self._send_slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        return self._send_slots

    def _signer_of(self, prediction_id: str) -> str:
        pred = self.store.get(prediction_id)
        if pred is None:  # predictions are never deleted; a row without one cannot be signed
            raise LookupError(f"prediction {prediction_id} not found")
        return pred.webhook_signer

    def _is_store_outage(self, exc: BaseException) -> bool:
        """The database (predictions or secrets, one SQLite file) cannot be used right now."""
        return self.store.is_outage(exc) or isinstance(exc, sqlite3.OperationalError)

    async def _put_off(self, delivery: Delivery, exc: BaseException) -> None:
        """The delivery could not be signed (the database is out): try it again later, its
        attempt count unchanged. Logged once per outage, not once per delivery and try."""
        if not self._signing_outage:
            self._signing_outage = True
            log.warning(
                "cannot sign webhooks: the database is unavailable (%s); they wait, their attempts unused",
                exc,
            )
        retry_at = time.time() + max(self.settings.webhooks.interval_s, MIN_PUT_OFF_S)
        with contextlib.suppress(Exception):  # if not, its lease runs out and it is claimed again
            await asyncio.to_thread(self.deliveries.release, delivery.id, due_at=retry_at)

    def _signing_recovered(self) -> None:
        if self._signing_outage:
            self._signing_outage = False
            log.info("webhooks are signed again: the database answers")

    async def _signature_headers(self, signer: str, msg_id: str, payload: Any) -> dict[str, str]:
        """The Standard Webhooks headers, signed now with ``signer``'s current secret."""
        secret = await asyncio.to_thread(self.signing_secret, signer)
        timestamp = int(time.time())
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": standard_webhook_signature(secret, msg_id, timestamp, wire_body(payload)),
        }

    # -- Replicate's start and logs events (best effort) ------------------------------------
    def on_change(self, prediction_id: str) -> None:
        """The prediction's row changed (the feed's ``changed``: picked up, new logs, ended).
        Any thread."""
        if prediction_id in self._ignored:
            return
        self._on_loop(self._changed, prediction_id)

    def _changed(self, prediction_id: str) -> None:
        if self._stopping or prediction_id in self._ignored:
            return
        follow = self._follows.get(prediction_id)
        if follow is None:
            follow = self._follows[prediction_id] = _Follow()
        follow.dirty = True
        if follow.task is None or follow.task.done():
            follow.task = asyncio.get_running_loop().create_task(self._follow(prediction_id, follow))

    def _ignore(self, prediction_id: str) -> None:
        self._follows.pop(prediction_id, None)
        self._ignored[prediction_id] = None
        while len(self._ignored) > IGNORED_CACHE:
            self._ignored.popitem(last=False)

    def _forget(self, prediction_id: str) -> None:
        follow = self._follows.pop(prediction_id, None)
        if follow is not None and follow.task is not None and follow.task is not asyncio.current_task():
            follow.task.cancel()
        self._ignored[prediction_id] = None
        while len(self._ignored) > IGNORED_CACHE:
            self._ignored.popitem(last=False)

    async def _follow(self, prediction_id: str, follow: _Follow) -> None:
        try:
            while follow.dirty:
                follow.dirty = False
                pred = await asyncio.to_thread(self.store.get, prediction_id)
                if pred is None or pred.extra.get("api") != API or not pred.webhook_url:
                    self._ignore(prediction_id)
                    return
                events = events_of(pred)
                if not events & {"start", "logs"}:
                    self._ignore(prediction_id)
                    return
                if pred.terminal:
                    self._forget(prediction_id)  # the end goes through the durable queue
                    return
                if pred.status != PROCESSING:
                    continue
                if "start" in events and not follow.started_sent:
                    follow.started_sent = True
                    follow.last_logs = pred.logs
                    await self._send_once(pred, "start")
                    follow.last_sent = time.monotonic()
                elif "logs" in events and pred.logs != follow.last_logs:
                    wait = follow.last_sent + THROTTLE_S - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                        follow.dirty = True  # read again: send the latest logs
                        continue
                    follow.last_logs = pred.logs
                    await self._send_once(pred, "logs")
                    follow.last_sent = time.monotonic()
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - best effort
            log.exception("webhook events of prediction %s", prediction_id)

    async def _send_once(self, pred: Prediction, event: str) -> None:
        assert pred.webhook_url is not None
        payload = prediction_object(self.render, pred)
        headers = await self._signature_headers(pred.webhook_signer, "msg_" + uuid.uuid4().hex, payload)
        try:
            async with self._slots():
                code = await self._post(pred.webhook_url, payload, headers)
        except FetchError as exc:
            log.warning(
                "prediction %s: webhook %s event to %s: %s",
                pred.id,
                event,
                display_url(pred.webhook_url),
                _scrub(str(exc), pred.webhook_url),
            )
            return
        if not 200 <= code < 300:
            log.warning(
                "prediction %s: webhook %s event to %s: HTTP %d",
                pred.id,
                event,
                display_url(pred.webhook_url),
                code,
            )
