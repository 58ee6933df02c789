"""The supervisor: starts worker processes, hands them queued predictions, records what they
report, and replaces them when they die or hang.

It runs on the API process's event loop. Each worker has a reader thread (blocking Pipe
reads) that forwards messages to the loop, and an asyncio queue so one worker's messages are
applied to the store in the order they were sent. Store calls run in the default thread pool.

A prediction's end (a worker's result, a lost worker, a job given back) that the store does not
take (database disk full...) is kept in memory and retried until it does, so no prediction is
left ``processing`` with no worker; meanwhile /health-check says UNHEALTHY with the store's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.inputs import InvalidInputs, parse_inputs
from server.events import wait_event
from server.outputs.local import LocalOutputStorage, OutputStorageError, output_name
from server.predictions.model import CANCELLED, ERROR, SUCCESS, WORKER_LOST, Prediction
from server.store import PredictionStore
from server.store.health import StoreHealth
from server.workers.messages import (
    CancelJob,
    JobCancelled,
    JobFailed,
    JobLog,
    JobSucceeded,
    RunJob,
    SetupFailed,
    Shutdown,
    WorkerReady,
)
from server.workers.process import WorkerConfig, worker_main

log = logging.getLogger("fluxserve.supervisor")

# Worker states, also the values of the fluxserve_workers metric's "state" label.
W_STARTING, W_READY, W_BUSY, W_FAILED, W_STOPPED = "starting", "ready", "busy", "failed", "stopped"
WORKER_STATES = (W_STARTING, W_READY, W_BUSY, W_FAILED, W_STOPPED)

# Health states of /health-check. UNHEALTHY: the prediction store is failing (cog's name for a
# server that is up but cannot serve right now).
STARTING, READY, BUSY, SETUP_FAILED, SHUTTING_DOWN = (
    "STARTING",
    "READY",
    "BUSY",
    "SETUP_FAILED",
    "SHUTTING_DOWN",
)
UNHEALTHY = "UNHEALTHY"

MAX_LOAD_CRASHES = 3  # consecutive deaths while loading before a slot is declared failed
CANCEL_POLL_S = 0.5  # how often running jobs' cancel flags are re-read (cancels made by other API hosts)
FALLBACK_DISPATCH_S = 1.0  # dispatch runs at least this often even without a wake-up
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 5.0  # ends the store refused: retried after this, doubling up to that


@dataclass
class PendingEnd:
    """A prediction's end on its way to the store: written once, then reported (waiters, webhooks).
    Kept and retried while the store refuses either step."""

    prediction_id: str
    write: Callable[[], Awaitable[bool]]  # records the end; True when it changed the row
    written: bool = False  # the row holds the end; only the report is left
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one attempt at a time


@dataclass
class _Result:
    """A worker's result, and the file names of its images once they are written (they are
    written once: a retry records the same files)."""

    msg: Any  # JobSucceeded | JobFailed | JobCancelled
    names: list[str] | None = None


@dataclass
class WorkerSlot:
    index: int
    gpu: str | None  # a CUDA_VISIBLE_DEVICES entry, or None to leave it alone
    state: str = W_STARTING
    process: Any = None  # multiprocessing.Process
    conn: Any = None
    generation: int = 0
    job: Prediction | None = None
    job_started: float = 0.0
    started_at: float = 0.0
    timed_out: bool = False
    stopping: bool = False
    load_crashes: int = 0
    setup_error: str | None = None
    ready: WorkerReady | None = None
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    reader: threading.Thread | None = None  # forwards the pipe to ``inbox``; ends at the worker's exit

    @property
    def worker_id(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:w{self.index}.{self.generation}"


def visible_gpus() -> list[str]:
    """The GPUs a worker can be pinned to, as CUDA_VISIBLE_DEVICES entries, found without
    importing torch in the API process: the parent's own CUDA_VISIBLE_DEVICES entries when set
    (so "2,3" pins workers to physical GPUs 2 and 3), else nvidia-smi's indices."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [p.strip() for p in env.split(",") if p.strip() and p.strip() != "-1"]
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return [line.strip() for line in out.split() if line.strip().isdigit()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


class Supervisor:
    def __init__(
        self,
        settings,
        store: PredictionStore,
        outputs: LocalOutputStorage,
        notify: Callable[[str], None],
        on_finished: Callable[[Prediction], None] | None = None,
        observe_predict_time: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.outputs = outputs
        self._notify = notify
        self._on_finished = on_finished
        self._observe = observe_predict_time
        self.slots: list[WorkerSlot] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self.accepting = True
        self._stopped = False
        self._drain_deadline: float | None = None  # one grace period, however many callers wait on it
        self.model_defaults = settings.model.defaults
        self._retry_now = asyncio.Event()
        self.store_health = StoreHealth(on_recovered=self._retry_now.set)
        self._pending: dict[str, PendingEnd] = {}  # ends the store has not taken yet, by prediction id

    # -- lifecycle ------------------------------------------------------------------------
    def plan_slots(self) -> list[tuple[int, str | None]]:
        cfg = self.settings.workers
        device = self.settings.model.device
        if cfg.gpus is not None:
            gpus = [str(g) for g in cfg.gpus]
        else:
            gpus = [] if device == "cpu" else visible_gpus()
        if cfg.count == "auto":
            if device.startswith("cuda:"):
                return [(0, None)]  # the spec pins a device: one worker, no masking
            return [(i, g) for i, g in enumerate(gpus)] or [(0, None)]
        count = int(cfg.count)
        if not gpus:
            return [(i, None) for i in range(count)]
        return [(i, gpus[i % len(gpus)]) for i in range(count)]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        outcomes = await asyncio.to_thread(
            self.store.recover_after_restart, self.settings.workers.max_attempts
        )
        for pid, outcome in outcomes:
            log.warning("prediction %s was running when the server stopped: %s", pid, outcome)
            # An end (failed, or cancelled by a cancel requested before the stop) is owed its
            # webhook like any other; _finished reports only predictions that did end.
            await self._finished(pid)
        for index, gpu in self.plan_slots():
            slot = WorkerSlot(index=index, gpu=gpu)
            self.slots.append(slot)
            self._spawn(slot)
            self._tasks.append(asyncio.create_task(self._consume(slot), name=f"worker-{index}-inbox"))
        self._tasks.append(asyncio.create_task(self._dispatch_loop(), name="dispatch"))
        self._tasks.append(asyncio.create_task(self._watchdog_loop(), name="watchdog"))
        self._tasks.append(asyncio.create_task(self._retry_loop(), name="pending-ends"))

    def _worker_config(self, slot: WorkerSlot) -> WorkerConfig:
        s = self.settings
        return WorkerConfig(
            model=s.model_spec().model_dump(),
            gpu=slot.gpu,
            max_image_bytes=s.input_images.max_bytes,
            max_image_pixels=s.input_images.max_pixels,
            fetch_timeout_s=s.input_images.fetch_timeout_s,
            allow_private_addresses=s.input_images.allow_private_addresses,
            allowed_hosts=list(s.input_images.allowed_hosts),
            progress_interval_s=s.workers.progress_interval_s,
            nice=s.workers.nice,
            fault_injection=os.environ.get("FLUXSERVE_FAULT_INJECTION") == "1",
            log_level=s.log_level,
        )

    def _spawn(self, slot: WorkerSlot) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        slot.generation += 1
        slot.state = W_STARTING
        slot.ready = None
        slot.timed_out = False
        slot.started_at = time.monotonic()
        proc = self._ctx.Process(
            target=worker_main,
            args=(child_conn, self._worker_config(slot)),
            name=f"fluxserve-worker-{slot.index}",
            daemon=True,
        )
        proc.start()
        child_conn.close()
        slot.process, slot.conn = proc, parent_conn
        log.info(
            "worker %d started (pid %d%s)",
            slot.index,
            proc.pid,
            f", GPU {slot.gpu}" if slot.gpu is not None else "",
        )
        slot.reader = threading.Thread(
            target=self._reader,
            args=(slot, parent_conn, slot.generation),
            daemon=True,
            name=f"worker-{slot.index}-reader",
        )
        slot.reader.start()

    def _reader(self, slot: WorkerSlot, conn, generation: int) -> None:
        """Blocking reads of one worker's pipe, forwarded to the loop; EOF means the process ended."""
        loop = self._loop
        assert loop is not None
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # noqa: BLE001 - an unpicklable message must not kill the reader
                log.error("bad message from worker %d: %s", slot.index, exc)
                continue
            loop.call_soon_threadsafe(slot.inbox.put_nowait, (generation, msg))
        loop.call_soon_threadsafe(slot.inbox.put_nowait, (generation, None))

    # -- messages -------------------------------------------------------------------------
    async def _consume(self, slot: WorkerSlot) -> None:
        while True:
            generation, msg = await slot.inbox.get()
            try:
                if generation != slot.generation:
                    continue  # from a previous incarnation of this slot
                if msg is None:
                    await self._on_exit(slot)
                else:
                    await self._on_message(slot, msg)
            except Exception:  # noqa: BLE001 - keep consuming whatever one message did
                log.exception("handling a message from worker %d", slot.index)
            finally:
                slot.inbox.task_done()  # stop() waits on inbox.join() for exits to be settled

    async def _on_message(self, slot: WorkerSlot, msg) -> None:
        if isinstance(msg, WorkerReady):
            if slot.state != W_STARTING:
                return  # the load timed out and the process is being killed: too late
            slot.ready, slot.state, slot.load_crashes = msg, W_READY, 0
            log.info(
                "worker %d ready: %s on %s (%s) in %.1f s",
                slot.index,
                msg.weights,
                msg.device,
                msg.dtype,
                msg.load_seconds,
            )
            for warning in msg.warnings:
                log.warning("worker %d: %s", slot.index, warning)
            self.wake()
        elif isinstance(msg, SetupFailed):
            slot.state, slot.setup_error = W_FAILED, msg.reason
            log.error("worker %d could not load the model: %s", slot.index, msg.reason)
        elif isinstance(msg, JobLog):
            try:
                await asyncio.to_thread(self.store.append_logs, msg.prediction_id, msg.text)
            except Exception as exc:  # noqa: BLE001 - progress lines are best effort: this one is lost
                self.store_failed(exc)
                return
            self._notify(msg.prediction_id)
        elif isinstance(msg, JobSucceeded | JobFailed | JobCancelled):
            await self._finish_job(slot, msg)

    async def _finish_job(self, slot: WorkerSlot, msg) -> None:
        end = PendingEnd(msg.prediction_id, functools.partial(self._record_result, _Result(msg)))
        written = await self._write_end(end)
        if slot.job is not None and slot.job.id == msg.prediction_id:
            # The slot goes on even while the result waits for the store: the result is kept.
            slot.job = None
            if slot.state == W_BUSY:
                # A worker that reported a fatal device error is exiting: give it no new job.
                exiting = isinstance(msg, JobFailed) and msg.worker_exiting
                slot.state = W_STOPPED if exiting else W_READY
        if not (written and await self._report_end(end)):
            self._keep(end)
        self.wake()

    async def _record_result(self, result: _Result) -> bool:
        """Write a worker's result to the row; True when it changed the row. Raises while the
        store cannot be used (then it is retried, the same way). A failure that is not the
        store's (a bug, bad data) ends the prediction in error instead."""
        msg, pid = result.msg, result.msg.prediction_id
        try:
            if isinstance(msg, JobSucceeded):
                return await self._store_success(result)
            if isinstance(msg, JobFailed):
                return await asyncio.to_thread(self.store.finish, pid, ERROR, error=msg.error)
            return await asyncio.to_thread(self.store.finish, pid, CANCELLED)
        except Exception as exc:
            if self.store.is_outage(exc):
                raise
            log.exception("prediction %s: recording the result failed", pid)
            return await asyncio.to_thread(self.store.finish, pid, ERROR, error="Failed to record the result")

    async def _store_success(self, result: _Result) -> bool:
        msg: JobSucceeded = result.msg
        pid = msg.prediction_id
        current = await asyncio.to_thread(self.store.get, pid)
        if current is None or current.terminal:
            return False
        if current.cancel_requested:
            # Cancelled after the last step (or while the result waited for the store): the
            # contract discards the images.
            ok = await asyncio.to_thread(
                self.store.finish, pid, CANCELLED, logs="Cancelled: the images were discarded.\n"
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
                return await asyncio.to_thread(self.store.finish, pid, ERROR, error=str(exc))
        ok = await asyncio.to_thread(
            self.store.finish,
            pid,
            SUCCESS,
            output=result.names,
            predict_time=msg.predict_time,
            extra=msg.extra,
        )
        if ok and self._observe is not None:
            self._observe(msg.predict_time)
        return ok

    # -- ends the store must take -----------------------------------------------------------
    def store_failed(self, exc: BaseException) -> None:
        """A store call raised: /health-check says so until a write goes through again."""
        self.store_health.failed(exc, unexpected=not self.store.is_outage(exc))

    def store_working(self) -> None:
        """A write went through (a create, a claim, an end recorded)."""
        self.store_health.working()

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

    async def _retry_loop(self) -> None:
        delay = RETRY_FIRST_S
        while not self._stopped:
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

    @property
    def pending_ends(self) -> int:
        """Ends (results, lost workers) the store has not taken yet."""
        return len(self._pending)

    async def _finished(self, pid: str) -> None:
        self._notify(pid)
        if self._on_finished is not None:
            pred = await asyncio.to_thread(self.store.get, pid)
            if pred is not None and pred.terminal:
                self._on_finished(pred)

    async def _on_exit(self, slot: WorkerSlot) -> None:
        """The worker process ended: settle its job and start a new one unless we are stopping."""
        was_loading = slot.state == W_STARTING
        if slot.state != W_FAILED:
            slot.state = W_STOPPED  # nothing is dispatched to this slot until it is replaced
        proc = slot.process
        await asyncio.to_thread(proc.join, 5)
        if proc.is_alive():  # its pipe broke but it lives on: never run two beside each other
            proc.kill()
            await asyncio.to_thread(proc.join, 5)
        code = proc.exitcode
        job, slot.job = slot.job, None
        if job is not None:
            # Kept and retried if the store refuses it; the slot lives on either way.
            settle = functools.partial(self._settle_lost_job, job, code, slot.timed_out)
            await self._end(PendingEnd(job.id, settle))
        if slot.stopping or self._stopped:
            slot.state = W_STOPPED
            return
        if slot.state == W_FAILED:
            return  # setup failed: restarting would fail the same way
        if was_loading:
            slot.load_crashes += 1
            if slot.load_crashes >= MAX_LOAD_CRASHES:
                slot.state = W_FAILED
                slot.setup_error = (
                    f"the worker process died while loading the model {slot.load_crashes} times "
                    f"(exit code {code})"
                )
                log.error("worker %d: %s", slot.index, slot.setup_error)
                return
        log.warning("worker %d exited (code %s); starting a new one", slot.index, code)
        await asyncio.sleep(min(5.0, 0.5 * slot.load_crashes))
        if slot.stopping or self._stopped:  # stop() began while we waited
            return
        try:
            self._spawn(slot)
        except Exception as exc:  # noqa: BLE001 - out of processes or file descriptors
            log.exception("worker %d: could not start a new worker process", slot.index)
            slot.state, slot.setup_error = W_FAILED, f"could not start a worker process: {exc}"

    async def _settle_lost_job(self, job: Prediction, code: int | None, timed_out: bool) -> bool:
        if timed_out:
            limit = self.settings.workers.job_timeout_s
            return await asyncio.to_thread(
                self.store.finish,
                job.id,
                ERROR,
                error=f"timed out after {limit:g} s",
                logs=f"Timed out after {limit:g} s: the worker was stopped and replaced.\n",
            )
        if job.attempts < self.settings.workers.max_attempts:
            return await asyncio.to_thread(
                self.store.requeue,
                job.id,
                f"Worker lost (exit code {code}); requeued for attempt {job.attempts + 1}.\n",
            )
        return await asyncio.to_thread(
            self.store.finish,
            job.id,
            ERROR,
            error=WORKER_LOST,
            logs=f"Worker lost: the process running this prediction died (exit code {code}).\n",
        )

    # -- dispatch -------------------------------------------------------------------------
    def wake(self) -> None:
        """Something may be runnable now (a create, a worker freed): dispatch without waiting."""
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        while not self._stopped:
            await wait_event(self._wake, FALLBACK_DISPATCH_S)
            self._wake.clear()
            if not self.accepting:
                continue
            try:
                await self._dispatch()
            except Exception:  # noqa: BLE001 - a store hiccup must not stop dispatching for good
                log.exception("dispatch failed")

    async def _dispatch(self) -> None:
        for slot in self.slots:
            if slot.state != W_READY or slot.job is not None:
                continue
            generation = slot.generation
            try:
                pred = await asyncio.to_thread(self.store.claim_next, slot.worker_id)
            except Exception as exc:  # noqa: BLE001 - logged once per change of the store's state
                self.store_failed(exc)
                return
            if pred is None:
                return
            self.store_working()
            if slot.generation != generation or slot.state != W_READY or slot.job is not None:
                # The worker exited (or was replaced) while the claim ran: put the job back.
                await self._give_back(pred.id)
                continue
            try:
                inputs = parse_inputs(pred.input, self.model_defaults)
            except InvalidInputs as exc:  # stored before a config change made it invalid
                invalid = functools.partial(
                    asyncio.to_thread, self.store.finish, pred.id, ERROR, error=f"Invalid input: {exc}"
                )
                await self._end(PendingEnd(pred.id, invalid))
                continue
            try:
                slot.conn.send(RunJob(pred.id, inputs.model_dump(), pred.attempts))
            except OSError:
                # The worker is gone (its exit is on the way): the job never reached it.
                log.warning("worker %d pipe closed while sending a job; requeued", slot.index)
                slot.state = W_STOPPED
                await self._give_back(pred.id)
                continue
            slot.job, slot.state, slot.job_started = pred, W_BUSY, time.monotonic()
            self._notify(pred.id)

    async def _give_back(self, prediction_id: str) -> None:
        """Requeue a claimed job its worker never got, without spending an attempt. A cancel
        requested meanwhile ends it instead, and then its end is reported like any other."""
        requeue = functools.partial(
            asyncio.to_thread,
            self.store.requeue,
            prediction_id,
            "Requeued: its worker stopped before it started.",
            never_ran=True,
        )
        # Reported only if the requeue ended it (cancelled).
        await self._end(PendingEnd(prediction_id, requeue))
        self.wake()

    async def cancel(self, prediction_id: str) -> None:
        """Tell the worker running this prediction to stop at its next step."""
        for slot in self.slots:
            if slot.job is not None and slot.job.id == prediction_id:
                try:
                    slot.conn.send(CancelJob(prediction_id))
                except OSError:
                    pass

    async def _watchdog_loop(self) -> None:
        """Timeouts (hung steps, hung loads) and cancel flags set by other API processes."""
        last_cancel_poll = 0.0
        while not self._stopped:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            self._check_timeouts(now)
            if now - last_cancel_poll >= CANCEL_POLL_S:
                last_cancel_poll = now
                try:
                    await self._forward_cancels()
                except Exception as exc:  # noqa: BLE001 - a store hiccup must not end cancel polling for good
                    self.store_failed(exc)

    def _check_timeouts(self, now: float) -> None:
        cfg = self.settings.workers
        for slot in self.slots:
            if (
                slot.state == W_BUSY
                and slot.job
                and now - slot.job_started > cfg.job_timeout_s
                and not slot.timed_out
            ):
                log.error(
                    "prediction %s timed out after %g s; killing worker %d",
                    slot.job.id,
                    cfg.job_timeout_s,
                    slot.index,
                )
                slot.timed_out = True
                slot.state = W_STOPPED  # no job goes to it, even if a result is already on its way
                slot.process.kill()
            elif (
                slot.state == W_STARTING and now - slot.started_at > cfg.load_timeout_s and not slot.timed_out
            ):
                slot.timed_out = True
                slot.state = W_FAILED
                slot.setup_error = f"loading the model took longer than {cfg.load_timeout_s:g} s"
                slot.process.kill()

    async def _forward_cancels(self) -> None:
        for slot in self.slots:
            if slot.job is not None:
                row = await asyncio.to_thread(self.store.get, slot.job.id)
                if row is not None and row.cancel_requested and slot.job is not None:
                    await self.cancel(row.id)

    # -- health ---------------------------------------------------------------------------
    def health(self) -> tuple[str, dict[str, Any]]:
        states = [s.state for s in self.slots]
        store = self.store_health.info()
        if self._pending:
            store["unrecorded_ends"] = len(self._pending)
        details: dict[str, Any] = {"workers": [self._slot_info(s) for s in self.slots], "store": store}
        if not self.accepting:
            return SHUTTING_DOWN, details
        if states and all(s == W_FAILED for s in states):
            details["reason"] = "; ".join(sorted({s.setup_error or "unknown" for s in self.slots}))
            return SETUP_FAILED, details
        if self.store_health.failing:
            details["reason"] = f"the prediction store is failing: {self.store_health.error}"
            return UNHEALTHY, details
        if any(s == W_READY for s in states):
            return READY, details
        if any(s == W_BUSY for s in states):
            return BUSY, details
        if not states:
            details["reason"] = "no worker processes in this server (workers.count: 0)"
        return STARTING, details

    @staticmethod
    def _slot_info(slot: WorkerSlot) -> dict[str, Any]:
        info: dict[str, Any] = {"index": slot.index, "state": slot.state}
        if slot.gpu is not None:
            info["gpu"] = slot.gpu
        if slot.ready is not None:
            info.update(device=slot.ready.device, dtype=slot.ready.dtype, tiny_model=slot.ready.is_tiny)
        if slot.setup_error:
            info["error"] = slot.setup_error
        return info

    @property
    def serving_tiny_model(self) -> bool:
        return any(s.ready is not None and s.ready.is_tiny for s in self.slots)

    def worker_state_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(WORKER_STATES, 0)
        for slot in self.slots:
            counts[slot.state] += 1
        return counts

    # -- shutdown -------------------------------------------------------------------------
    async def drain(self, grace_s: float) -> None:
        """Stop taking jobs and give running ones up to ``grace_s`` seconds to finish."""
        self.accepting = False
        if self._drain_deadline is None:  # `serve` drains on SIGTERM, then the app's shutdown drains again
            self._drain_deadline = time.monotonic() + grace_s
        # Kept ends (the store refused them) get the same grace to be recorded.
        while time.monotonic() < self._drain_deadline and (
            self._pending or any(s.job is not None for s in self.slots)
        ):
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Stop every worker. Jobs still running are settled like a lost worker; queued ones stay."""
        self.accepting = False
        for slot in self.slots:
            slot.stopping = True
            if slot.process is not None and slot.process.is_alive():
                try:
                    slot.conn.send(Shutdown())
                except OSError:
                    pass
        deadline = time.monotonic() + 5
        for slot in self.slots:
            if slot.process is None:
                continue
            if slot.job is not None:
                slot.process.kill()  # it is mid-job: nothing to wait for
            await asyncio.to_thread(slot.process.join, max(0.1, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                await asyncio.to_thread(slot.process.join, 5)
        # Let the consumers settle every exit (a job cut short ends like a lost worker's): the
        # reader posts the exit and ends, then the inbox is joined. Bounded: a row left unsettled
        # is settled by the next start's recovery instead.
        for slot in self.slots:
            if slot.reader is not None:
                await asyncio.to_thread(slot.reader.join, 5)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await slot.inbox.join()
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pending:
            await self.retry_pending_ends()  # a last try; the next start's recovery settles the rest
        for pid in self._pending:
            log.error("prediction %s: its end was never recorded; the next start settles it as lost", pid)
