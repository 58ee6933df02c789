"""The jobs of one worker host: claim a queued prediction, send it to a ready worker slot, record
what the worker reports; keep the leases of running jobs alive and settle the jobs of lost
workers.

It runs on the API process's event loop; store calls run in the default thread pool. Every write
about a claimed job is made under its lease (``Prediction.lease``): once the job was taken from
this host (its lease expired and another host recovered it) the store refuses it.

- **Dispatch**: a ready slot gets the oldest queued prediction of the models it serves; its
  ``params`` (the inputs resolved at create) go to the worker as they are, with the name of their
  input schema. Rows made before params were stored are resolved from their ``input`` here.
- **Overlap**: a worker says ``GpuFreeSoon`` as its job's last denoising step begins; the job
  then waits in ``slot.finishing`` while its images are finished, and the slot takes the next
  job at once (up to ``MAX_FINISHING`` finishing). Every held job (on the GPU or finishing) has
  its lease renewed, its cancel forwarded, and is settled if the worker dies.
- **Leases**: every third of ``workers.lease_s`` the host renews the leases of the jobs it holds
  (running, or ended with the end not yet recorded), then settles expired leases of any host
  (``recover_expired``). At start it settles its own previous run's jobs at once
  (``recover_at_start``).
- **Kept ends**: a prediction's end (a worker's result, a lost worker, a job given back) that the
  store does not take (database disk full...) is kept in memory and retried until it does, so no
  prediction is left ``processing`` with no worker; meanwhile /health-check says UNHEALTHY with
  the store's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.inputs import InvalidInputs, parse_inputs
from server.outputs.base import OutputStorage, OutputStorageError
from server.outputs.local import output_name
from server.predictions.activity import PredictionLog
from server.predictions.feed import wait_event
from server.predictions.model import CANCELLED, ERROR, SUCCESS, WORKER_LOST, Lease, Prediction
from server.predictions.models import ModelRegistry
from server.store.base import PredictionStore
from server.store.health import StoreHealth
from server.workers.messages import (
    CancelJob,
    GpuFreeSoon,
    JobCancelled,
    JobFailed,
    JobLog,
    JobPreview,
    JobStarted,
    JobSucceeded,
    RunJob,
)
from server.workers.slot import W_BUSY, W_READY, W_STOPPED, FinishingJob, WorkerSlot, default_host_id

log = logging.getLogger("fluxserve.supervisor")  # the name these lines always had: log filters keep working

CANCEL_POLL_S = 0.5  # how often running jobs' cancel flags are re-read (cancels made by other API hosts)
FALLBACK_DISPATCH_S = 1.0  # dispatch runs at least this often even without a wake-up
# On a store several hosts share, a create or a cancel usually comes from another process and its
# notification may be lost (a listener reconnecting): both backstops are short.
SHARED_POLL_S = 0.25
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 5.0  # ends the store refused: retried after this, doubling up to that

WorkerEnd = JobSucceeded | JobFailed | JobCancelled


@dataclass
class PendingEnd:
    """A prediction's end on its way to the store: written once, then reported (waiters, webhooks).
    Kept and retried while the store refuses either step."""

    prediction_id: str
    write: Callable[[], Awaitable[bool]]  # records the end; True when it changed the row
    lease: Lease | None = None  # renewed by the heartbeat while the end waits
    written: bool = False  # the row holds the end; only the report is left
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one attempt at a time


@dataclass
class _Result:
    """A worker's result, and the file names of its images once they are written (they are
    written once: a retry records the same files)."""

    msg: WorkerEnd
    lease: Lease | None
    names: list[str] | None = None


class Jobs:
    """The job bookkeeping of one worker host, over the supervisor's slots."""

    def __init__(
        self,
        settings,
        store: PredictionStore,
        outputs: OutputStorage,
        slots: Sequence[WorkerSlot],
        *,
        notify: Callable[[str], None],
        on_finished: Callable[[Prediction], None] | None = None,
        observe_predict_time: Callable[[float], None] | None = None,
        host_id: str | None = None,
        models: ModelRegistry | None = None,
        activity: PredictionLog | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.outputs = outputs
        self.slots = slots
        self.host_id = host_id or getattr(settings.workers, "host_id", None) or default_host_id()
        self.lease_s: float = settings.workers.lease_s
        self.models = models if models is not None else ModelRegistry.from_settings(settings)
        self.accepting = True
        self._notify = notify
        self._on_finished = on_finished
        self._observe = observe_predict_time
        self.activity = activity if activity is not None else PredictionLog()
        self._wake = asyncio.Event()
        self._retry_now = asyncio.Event()
        self.store_health = StoreHealth(on_recovered=self._retry_now.set)
        self._pending: dict[str, PendingEnd] = {}  # ends the store has not taken yet, by prediction id
        self._tasks: list[asyncio.Task] = []

    @property
    def dispatch_poll_s(self) -> float:
        """Dispatch runs at least this often, woken or not."""
        return SHARED_POLL_S if self.store.shared else FALLBACK_DISPATCH_S

    @property
    def cancel_poll_s(self) -> float:
        """Running jobs' cancel flags are re-read this often."""
        return SHARED_POLL_S if self.store.shared else CANCEL_POLL_S

    # -- lifecycle ------------------------------------------------------------------------
    async def recover_at_start(self) -> None:
        """Settle the jobs this host's previous run left (it died with them): before any worker
        runs, with the store's data lock held."""
        outcomes = await asyncio.to_thread(
            self.store.recover_at_start, self.settings.workers.max_attempts, self.host_id
        )
        for pid, outcome in outcomes:
            log.warning("prediction %s was running when the server stopped: %s", pid, outcome)
            # An end (failed, or cancelled by a cancel requested before the stop) is owed its
            # webhook like any other; _finished reports only predictions that did end.
            await self._finished(pid)

    def start(self) -> None:
        """Start the loops: dispatch, kept ends, cancel forwarding, leases."""
        for name, loop in (
            ("dispatch", self.run_dispatch),
            ("pending-ends", self.run_retries),
            ("cancel-poll", self.run_cancel_poll),
            ("leases", self.run_leases),
        ):
            self._tasks.append(asyncio.create_task(loop(), name=name))

    async def stop(self) -> None:
        """End the loops; one last try at the kept ends (the next start settles the rest)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pending:
            await self.retry_pending_ends()
        for pid in self._pending:
            log.error("prediction %s: its end was never recorded; the next start settles it as lost", pid)

    @property
    def busy(self) -> bool:
        """A job runs (or is being finished), or an end waits for the store."""
        return bool(self._pending) or any(s.held() for s in self.slots)

    # -- dispatch -------------------------------------------------------------------------
    def wake(self) -> None:
        """Something may be runnable now (a create, a worker freed): dispatch without waiting."""
        self._wake.set()

    async def run_dispatch(self) -> None:
        while True:
            await wait_event(self._wake, self.dispatch_poll_s)
            self._wake.clear()
            if not self.accepting:
                continue
            try:
                await self.dispatch()
            except Exception:  # noqa: BLE001 - a store hiccup must not stop dispatching for good
                log.exception("dispatch failed")

    async def dispatch(self) -> None:
        """Give each slot that takes jobs (ready, its GPU free) the oldest queued prediction of its
        models, while there are some."""
        empty: set[tuple[str, ...] | None] = set()  # the model sets found with nothing queued
        for slot in self.slots:
            if not slot.takes_jobs:
                continue
            models = tuple(slot.models) if slot.models is not None else None
            if models in empty:
                continue
            generation = slot.generation
            try:
                pred = await asyncio.to_thread(
                    self.store.claim_next, slot.worker_id, self.lease_s, models=models
                )
            except Exception as exc:  # noqa: BLE001 - logged once per change of the store's state
                self.store_failed(exc)
                return
            if pred is None:
                empty.add(models)
                continue
            self.store_working()
            if slot.generation != generation or not slot.takes_jobs:
                # The worker exited (or was replaced) while the claim ran: put the job back.
                await self._give_back(pred)
                continue
            inputs = await self._inputs(pred)
            if inputs is None:
                continue
            try:
                previews = pred.wants_previews(self.settings.previews.enabled)
                schema = self.models.schema_of(pred.model)
                run = RunJob(pred.id, inputs, pred.attempts, schema, pred.model, previews, pred.created_at)
                slot.conn.send(run)
            except OSError:
                # The worker is gone (its exit is on the way): the job never reached it.
                log.warning("worker %d pipe closed while sending a job; requeued", slot.index)
                slot.state = W_STOPPED
                await self._give_back(pred)
                continue
            slot.job, slot.state, slot.job_started = pred, W_BUSY, time.monotonic()
            slot.job_taken = False
            self._notify(pred.id)
            await self.activity.started(pred, slot.index)

    async def _inputs(self, pred: Prediction) -> dict[str, Any] | None:
        """What the worker runs: the params resolved at create, trusted as they are. A row made
        before params were stored is resolved now; None (and the job ended) if it is invalid."""
        if pred.params:
            return pred.params
        entry = self.models.by_slug(pred.model)
        try:
            if entry is None:  # a model no longer configured: flux-dev's inputs, no defaults
                return parse_inputs(pred.input).model_dump()
            return entry.resolve_inputs(pred.input).model_dump()
        except InvalidInputs as exc:  # stored before a config change made it invalid
            invalid = functools.partial(
                asyncio.to_thread,
                self.store.finish,
                pred.id,
                ERROR,
                error=f"Invalid input: {exc}",
                lease=pred.lease,
            )
            await self._end(PendingEnd(pred.id, invalid, pred.lease))
            return None

    async def _give_back(self, pred: Prediction) -> None:
        """Requeue a claimed job its worker never got, without spending an attempt. A cancel
        requested meanwhile ends it instead, and then its end is reported like any other."""
        requeue = functools.partial(
            asyncio.to_thread,
            self.store.requeue,
            pred.id,
            "Requeued: its worker stopped before it started.",
            never_ran=True,
            lease=pred.lease,
        )
        # Reported only if the requeue ended it (cancelled).
        await self._end(PendingEnd(pred.id, requeue, pred.lease))
        self.wake()

    # -- what workers report --------------------------------------------------------------
    async def record_log(self, slot: WorkerSlot, msg: JobLog) -> None:
        """Progress lines: best effort (one the store refuses is lost)."""
        try:
            await asyncio.to_thread(
                self.store.append_logs, msg.prediction_id, msg.text, lease=_lease_of(slot, msg.prediction_id)
            )
        except Exception as exc:  # noqa: BLE001 - progress lines are best effort: this one is lost
            self.store_failed(exc)
            return
        self._notify(msg.prediction_id)

    async def record_preview(self, slot: WorkerSlot, msg: JobPreview) -> None:
        """The newest preview replaces the last one: best effort, like progress lines (the
        worker sends at most about two a second)."""
        try:
            await asyncio.to_thread(
                self.store.put_preview,
                msg.prediction_id,
                msg.step,
                msg.data,
                lease=_lease_of(slot, msg.prediction_id),
            )
        except Exception as exc:  # noqa: BLE001 - a lost preview is replaced by the next one
            self.store_failed(exc)

    def job_started(self, slot: WorkerSlot, msg: JobStarted) -> None:
        """The worker took the slot's job from its queue: from now on it runs there."""
        if slot.job is not None and slot.job.id == msg.prediction_id:
            slot.job_taken = True

    def gpu_free_soon(self, slot: WorkerSlot, msg: GpuFreeSoon) -> None:
        """The slot's GPU job is in its last step: it moves to ``finishing`` and the slot takes the
        next job now, so that job is queued in the worker when the GPU stage ends."""
        job = slot.job
        if job is None or job.id != msg.prediction_id:
            return  # already ended (a result overtook nothing, but be safe) or not this slot's
        slot.finishing[job.id] = FinishingJob(job, slot.job_started)
        slot.job = None
        if slot.state == W_BUSY:
            slot.state = W_READY
        self.wake()

    async def record_end(self, slot: WorkerSlot, msg: WorkerEnd) -> None:
        """A worker's result: recorded (or kept until the store takes it), and the slot freed."""
        lease = _lease_of(slot, msg.prediction_id)
        end = PendingEnd(
            msg.prediction_id, functools.partial(self._record_result, _Result(msg, lease)), lease
        )
        written = await self._write_end(end)
        # A worker that reported a fatal device error is exiting: give it no new job.
        exiting = isinstance(msg, JobFailed) and msg.worker_exiting
        if slot.job is not None and slot.job.id == msg.prediction_id:
            # The slot goes on even while the result waits for the store: the result is kept.
            slot.job = None
            if slot.state == W_BUSY:
                slot.state = W_STOPPED if exiting else W_READY
        elif slot.finishing.pop(msg.prediction_id, None) is not None:
            if exiting and slot.state in (W_BUSY, W_READY):
                slot.state = W_STOPPED
        if not (written and await self._report_end(end)):
            self._keep(end)
        self.wake()

    async def settle_lost(self, slot: WorkerSlot, exit_code: int | None) -> None:
        """The slot's worker process ended: each job it held (on the GPU or finishing) ends like a
        lost worker's, timed out (the one whose timeout killed it), or is requeued when it has
        attempts left. Kept and retried if the store refuses it."""
        held = [job for job, _started in slot.held()]
        never_ran = slot.job if slot.job is not None and not slot.job_taken else None
        slot.job = None
        slot.finishing.clear()
        for job in held:
            if job is never_ran:  # still queued in the worker, sent ahead: it goes back to the queue
                await self._give_back(job)
                continue
            timed_out = slot.timed_out and slot.timed_out_job in (None, job.id)
            settle = functools.partial(self._settle_lost_job, job, exit_code, timed_out)
            await self._end(PendingEnd(job.id, settle, job.lease))

    async def _record_result(self, result: _Result) -> bool:
        """Write a worker's result to the row; True when it changed the row. Raises while the
        store cannot be used (then it is retried, the same way). A failure that is not the
        store's (a bug, bad data) ends the prediction in error instead."""
        msg, pid, lease = result.msg, result.msg.prediction_id, result.lease
        try:
            if isinstance(msg, JobSucceeded):
                return await self._store_success(result)
            if isinstance(msg, JobFailed):
                return await asyncio.to_thread(self.store.finish, pid, ERROR, error=msg.error, lease=lease)
            return await asyncio.to_thread(self.store.finish, pid, CANCELLED, lease=lease)
        except Exception as exc:
            if self.store.is_outage(exc):
                raise
            log.exception("prediction %s: recording the result failed", pid)
            return await asyncio.to_thread(
                self.store.finish, pid, ERROR, error="Failed to record the result", lease=lease
            )

    async def _store_success(self, result: _Result) -> bool:
        msg: JobSucceeded = result.msg  # type: ignore[assignment]
        pid, lease = msg.prediction_id, result.lease
        current = await asyncio.to_thread(self.store.get, pid)
        if current is None or current.terminal or (lease is not None and current.lease != lease):
            return False  # ended, or taken from this worker: its images are not this row's
        if current.cancel_requested:
            # Cancelled after the last step (or while the result waited for the store): the
            # contract discards the images.
            ok = await asyncio.to_thread(
                self.store.finish, pid, CANCELLED, logs="Cancelled: the images were discarded.\n", lease=lease
            )
            if result.names is not None:
                await asyncio.to_thread(self.outputs.delete, pid)
            return ok
        if result.names is None:
            files = [(output_name(i, img.extension), img.data) for i, img in enumerate(msg.images)]
            try:
                result.names = await asyncio.to_thread(self.outputs.save_all, pid, files)
            except OutputStorageError as exc:
                log.error("prediction %s: %s", pid, exc)
                return await asyncio.to_thread(self.store.finish, pid, ERROR, error=str(exc), lease=lease)
        ok = await asyncio.to_thread(
            self.store.finish,
            pid,
            SUCCESS,
            output=result.names,
            predict_time=msg.predict_time,
            extra=msg.extra,
            lease=lease,
        )
        if ok and self._observe is not None:
            self._observe(msg.predict_time)
        return ok

    async def _settle_lost_job(self, job: Prediction, code: int | None, timed_out: bool) -> bool:
        lease = job.lease
        if timed_out:
            limit = self.settings.workers.job_timeout_s
            return await asyncio.to_thread(
                self.store.finish,
                job.id,
                ERROR,
                error=f"timed out after {limit:g} s",
                logs=f"Timed out after {limit:g} s: the worker was stopped and replaced.\n",
                lease=lease,
            )
        if job.attempts < self.settings.workers.max_attempts:
            return await asyncio.to_thread(
                self.store.requeue,
                job.id,
                f"Worker lost (exit code {code}); requeued for attempt {job.attempts + 1}.\n",
                lease=lease,
            )
        return await asyncio.to_thread(
            self.store.finish,
            job.id,
            ERROR,
            error=WORKER_LOST,
            logs=f"Worker lost: the process running this prediction died (exit code {code}).\n",
            lease=lease,
        )

    # -- cancels --------------------------------------------------------------------------
    async def cancel(self, prediction_id: str) -> None:
        """Tell the worker running this prediction to stop at its next step (one being finished
        has no step left: its images are discarded when its result is recorded)."""
        for slot in self.slots:
            if slot.holding(prediction_id) is not None:
                with contextlib.suppress(OSError):
                    slot.conn.send(CancelJob(prediction_id))

    async def run_cancel_poll(self) -> None:
        """Cancel flags set by other API processes reach the worker within ``cancel_poll_s``."""
        while True:
            await asyncio.sleep(self.cancel_poll_s)
            try:
                await self.forward_cancels()
            except Exception as exc:  # noqa: BLE001 - a store hiccup must not end cancel polling for good
                self.store_failed(exc)

    async def forward_cancels(self) -> None:
        for slot in self.slots:
            for job, _started in slot.held():
                row = await asyncio.to_thread(self.store.get, job.id)
                if row is not None and row.cancel_requested and slot.holding(job.id) is not None:
                    await self.cancel(row.id)

    # -- leases ---------------------------------------------------------------------------
    def held_leases(self) -> list[Lease]:
        """The leases this host holds: its running and finishing jobs and the kept ends not yet
        written."""
        leases = [job.lease for s in self.slots for job, _started in s.held()]
        leases += [e.lease for e in self._pending.values() if not e.written]
        return [lease for lease in leases if lease is not None]

    async def run_leases(self) -> None:
        """The heartbeat, then the reaper, every third of the lease."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew_leases()
                await self.recover_expired()
            except Exception as exc:  # noqa: BLE001 - retried on the next beat; the store's state says why
                self.store_failed(exc)

    async def renew_leases(self) -> list[str]:
        """Renew the leases of the jobs this host holds; the ids of those taken from it (their
        workers are told to stop: nothing they report would be recorded)."""
        held = self.held_leases()
        if not held:
            return []
        lost = await asyncio.to_thread(self.store.renew_leases, held, self.lease_s)
        for pid in lost:
            if any(s.holding(pid) is not None for s in self.slots):
                log.warning("prediction %s: its lease was taken from this host; stopping its worker", pid)
                await self.cancel(pid)
        return lost

    async def recover_expired(self) -> None:
        """Settle jobs whose lease expired (their host died or lost the store), of any host."""
        held = {lease.prediction_id for lease in self.held_leases()}
        outcomes = await asyncio.to_thread(
            self.store.recover_expired, self.settings.workers.max_attempts, skip=held
        )
        for pid, outcome in outcomes:
            log.warning("prediction %s: its worker's lease expired: %s", pid, outcome)
            await self._finished(pid)
        if outcomes:
            self.wake()

    # -- ends the store must take -----------------------------------------------------------
    def store_failed(self, exc: BaseException) -> None:
        """A store call raised: /health-check says so until a write goes through again."""
        self.store_health.failed(exc, unexpected=not self.store.is_outage(exc))

    def store_working(self) -> None:
        """A write went through (a create, a claim, an end recorded)."""
        self.store_health.working()

    @property
    def pending_ends(self) -> int:
        """Ends (results, lost workers) the store has not taken yet."""
        return len(self._pending)

    async def _end(self, end: PendingEnd) -> None:
        """Record an end and report it; what the store refuses is kept and retried."""
        if not (await self._write_end(end) and await self._report_end(end)):
            self._keep(end)

    async def _write_end(self, end: PendingEnd) -> bool:
        async with end.lock:
            if end.written:
                return True
            try:
                changed = await end.write()
            except Exception as exc:  # noqa: BLE001 - kept and retried; the store's state says why
                self.store_failed(exc)
                return False
            end.written = True
        if changed:
            self.store_working()
        return True

    async def _report_end(self, end: PendingEnd) -> bool:
        try:
            await self._finished(end.prediction_id)
        except Exception as exc:  # noqa: BLE001 - the row is written; the report is retried
            self.store_failed(exc)
            return False
        return True

    def _keep(self, end: PendingEnd) -> None:
        if end.prediction_id not in self._pending:
            log.warning(
                "prediction %s: the store did not take its end; kept and retried until it does",
                end.prediction_id,
            )
        self._pending[end.prediction_id] = end

    async def retry_pending_ends(self) -> bool:
        """One attempt at every kept end; True when one of them was settled."""
        settled = False
        for pid, end in list(self._pending.items()):
            if await self._write_end(end) and await self._report_end(end):
                if self._pending.get(pid) is end:
                    del self._pending[pid]
                log.info("prediction %s: its end is recorded", pid)
                settled = True
        if settled:
            self.wake()
        return settled

    async def run_retries(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            await wait_event(self._retry_now, delay)  # set when the store recovers
            self._retry_now.clear()
            if not self._pending:
                delay = await self._probe_failing_store(delay)
                continue
            try:
                progressed = await self.retry_pending_ends()
            except Exception:  # noqa: BLE001 - the loop must outlive anything one attempt does
                log.exception("retrying the kept ends failed")
                progressed = False
            delay = RETRY_FIRST_S if progressed else min(RETRY_MAX_S, delay * 2)

    async def _probe_failing_store(self, delay: float) -> float:
        """With nothing kept to retry, a store marked failing is probed with a harmless write, so
        an idle server does not report the outage after it ended. The next delay to wait."""
        if not self.store_health.failing:
            return RETRY_FIRST_S
        try:
            took = await asyncio.to_thread(self.store.probe_write)
        except Exception as exc:  # noqa: BLE001 - still failing: the state keeps the reason
            self.store_failed(exc)
            return min(RETRY_MAX_S, delay * 2)
        if took:
            self.store_working()
        return RETRY_FIRST_S

    async def _finished(self, pid: str) -> None:
        self._notify(pid)
        pred = await asyncio.to_thread(self.store.get, pid)
        if pred is not None and pred.terminal:
            await self.activity.ended(pred)
            if self._on_finished is not None:
                self._on_finished(pred)


def _lease_of(slot: WorkerSlot, prediction_id: str) -> Lease | None:
    """The lease under which the slot runs (or finishes) this prediction (None if it does not)."""
    job = slot.holding(prediction_id)
    return job.lease if job is not None else None
