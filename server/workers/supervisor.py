"""The supervisor: starts the worker processes (one per slot, one slot per GPU), reads what they
report, and replaces them when they die or hang; the health of the slots. Each slot serves one
configured model (``slot_plan``): its worker loads that model and takes only its jobs.

It runs on the API process's event loop. Each worker has a reader thread (blocking Pipe
reads) that forwards messages to the loop, and an asyncio queue so one worker's messages are
handled in the order they were sent. The jobs themselves (claim, send, record, leases, kept
ends) are ``jobs.py``'s: the supervisor hands it each job message and each worker's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from pipelines.spec import ModelSpec
from server.outputs.base import OutputStorage
from server.predictions.activity import PredictionLog
from server.predictions.model import Prediction
from server.predictions.models import ModelRegistry
from server.store import PredictionStore
from server.store.health import StoreHealth
from server.workers.gpus import visible_gpus
from server.workers.jobs import Jobs
from server.workers.messages import (
    GpuFreeSoon,
    JobCancelled,
    JobFailed,
    JobLog,
    JobPreview,
    JobStarted,
    JobSucceeded,
    SetupFailed,
    Shutdown,
    WorkerReady,
    WorkerWarming,
)
from server.workers.process import WorkerConfig, worker_main
from server.workers.slot import (
    W_BUSY,
    W_FAILED,
    W_READY,
    W_STARTING,
    W_STOPPED,
    WORKER_STATES,
    WorkerSlot,
)

__all__ = [
    "Supervisor",
    "WorkerSlot",
    "W_BUSY",
    "W_FAILED",
    "W_READY",
    "W_STARTING",
    "W_STOPPED",
    "WORKER_STATES",
    "visible_gpus",
]

log = logging.getLogger("fluxserve.supervisor")

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
# A model's state in /health-check's ``models`` when no worker of this server serves it.
UNAVAILABLE = "UNAVAILABLE"

MAX_LOAD_CRASHES = 3  # consecutive deaths while loading before a slot is declared failed
WATCHDOG_S = 0.2  # how often hung jobs and hung loads are looked for


def model_line(states: list[str]) -> dict[str, Any]:
    """One model's line in /health-check's ``models`` from the states of the workers serving it
    (here or on the live worker hosts): READY if any is ready, else BUSY, SETUP_FAILED when all
    failed, UNAVAILABLE when none serves it."""
    if not states:
        status = UNAVAILABLE
    elif W_READY in states:
        status = READY
    elif W_BUSY in states:
        status = BUSY
    elif all(state == W_FAILED for state in states):
        status = SETUP_FAILED
    else:
        status = STARTING
    return {"status": status, "workers": len(states)}


class Supervisor:
    def __init__(
        self,
        settings,
        store: PredictionStore,
        outputs: OutputStorage,
        notify: Callable[[str], None],
        on_finished: Callable[[Prediction], None] | None = None,
        observe_predict_time: Callable[[float], None] | None = None,
        host_id: str | None = None,
        models: ModelRegistry | None = None,
        activity: PredictionLog | None = None,
        observe_idle_gap: Callable[[float], None] | None = None,
    ) -> None:
        """``activity``: where each job's start and end is logged (default: owners shown by id).
        ``observe_idle_gap``: gets each worker's idle gap before a queued job (JobStarted)."""
        self.settings = settings
        self._observe_idle_gap = observe_idle_gap
        self.store = store
        self.outputs = outputs
        self._notify = notify
        self.slots: list[WorkerSlot] = []
        self.models = models if models is not None else ModelRegistry.from_settings(settings)
        self.jobs = Jobs(
            settings,
            store,
            outputs,
            self.slots,
            models=self.models,
            notify=notify,
            on_finished=on_finished,
            observe_predict_time=observe_predict_time,
            host_id=host_id,
            activity=activity,
        )
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._stopped = False
        self._drain_deadline: float | None = None  # one grace period, however many callers wait on it
        self._announced_ready = False  # the "ready" line is logged once, when every worker first is

    @property
    def accepting(self) -> bool:
        """False once draining: no new job is dispatched (and the API refuses creates)."""
        return self.jobs.accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self.jobs.accepting = value

    @property
    def store_health(self) -> StoreHealth:
        return self.jobs.store_health

    # -- lifecycle ------------------------------------------------------------------------
    def slot_plan(self) -> list[tuple[int, str | None, ModelSpec]]:
        """(index, GPU, model) of each worker slot. One model alone, without its own ``gpus`` or
        ``workers``: ``workers.count`` / ``workers.gpus`` place its workers. Otherwise each model
        gets one worker per GPU in its ``gpus``, else ``workers`` (1) workers; ``workers.count: 0``
        still means no worker here."""
        specs = self.settings.model_specs
        (first, *others) = specs
        if not others and first.gpus is None and first.workers is None:
            return [(index, gpu, first) for index, gpu in self._plan_one_model(first.device)]
        if self.settings.workers.count == 0:
            return []
        plan: list[tuple[int, str | None, ModelSpec]] = []
        for spec in specs:
            places = [str(g) for g in spec.gpus] if spec.gpus is not None else [None] * (spec.workers or 1)
            plan += [(len(plan) + i, gpu, spec) for i, gpu in enumerate(places)]
        return plan

    def plan_slots(self) -> list[tuple[int, str | None]]:
        """(index, GPU) of each worker slot (``slot_plan`` without the models)."""
        return [(index, gpu) for index, gpu, _spec in self.slot_plan()]

    def _plan_one_model(self, device: str) -> list[tuple[int, str | None]]:
        cfg = self.settings.workers
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
        await self.jobs.recover_at_start()
        for index, gpu, spec in self.slot_plan():
            slot = WorkerSlot(index=index, gpu=gpu, host_id=self.jobs.host_id, spec=spec)
            self.slots.append(slot)
            self._spawn(slot)
            self._tasks.append(asyncio.create_task(self._consume(slot), name=f"worker-{index}-inbox"))
        self._tasks.append(asyncio.create_task(self._watchdog_loop(), name="watchdog"))
        self.jobs.start()

    def _worker_config(self, slot: WorkerSlot) -> WorkerConfig:
        s = self.settings
        return WorkerConfig(
            model=(slot.spec or s.model_spec()).model_dump(),
            gpu=slot.gpu,
            max_image_bytes=s.input_images.max_bytes,
            max_image_pixels=s.input_images.max_pixels,
            fetch_timeout_s=s.input_images.fetch_timeout_s,
            allow_private_addresses=s.input_images.allow_private_addresses,
            allowed_hosts=list(s.input_images.allowed_hosts),
            progress_interval_s=s.workers.progress_interval_s,
            preview_every_n_steps=s.previews.every_n_steps,
            preview_max_side=s.previews.max_side,
            preview_taesd=s.previews.taesd,
            nice=s.workers.nice,
            adapter_files=s.adapter_files_config(),
            lora_max_loaded=s.loras.max_loaded,
            lora_hotswap_max_rank=s.loras.hotswap_max_rank,
            fault_injection=os.environ.get("FLUXSERVE_FAULT_INJECTION") == "1",
            log_level=s.log_level,
            embed_parameters=s.outputs.embed_parameters,
            compile_cache_dir=str(s.compile_cache_path) if s.compile_cache_path else None,
            overlap_finishing=s.workers.overlap_finishing,
        )

    def _spawn(self, slot: WorkerSlot) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        slot.generation += 1
        slot.state = W_STARTING
        slot.ready = None
        slot.warming = None
        slot.timed_out = False
        slot.timed_out_job = None
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
            "worker %d started (pid %d%s%s)",
            slot.index,
            proc.pid,
            f", GPU {slot.gpu}" if slot.gpu is not None else "",
            f", model {slot.spec.name}" if self.several_models and slot.spec is not None else "",
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
                if generation == slot.generation:  # else from a previous incarnation of this slot
                    await self.handle(slot, msg)
            except Exception:  # noqa: BLE001 - keep consuming whatever one message did
                log.exception("handling a message from worker %d", slot.index)
            finally:
                slot.inbox.task_done()  # stop() waits on inbox.join() for exits to be settled

    async def handle(self, slot: WorkerSlot, msg: Any) -> None:
        """One message from the slot's worker, in order; None: the worker process ended."""
        if msg is None:
            await self._on_exit(slot)
        elif isinstance(msg, WorkerReady):
            if slot.state != W_STARTING:
                return  # the load timed out and the process is being killed: too late
            slot.ready, slot.state, slot.load_crashes, slot.warming = msg, W_READY, 0, None
            log.info(
                "worker %d ready: %s on %s (%s) in %.1f s",
                slot.index,
                msg.weights,
                msg.device,
                msg.dtype,
                msg.load_seconds,
            )
            log.info(
                "worker %d: model %s, weights %s (%s), device %s, dtype %s",
                slot.index,
                slot.spec.name if slot.spec is not None else "?",
                msg.weights,
                msg.source or "folder",
                msg.device,
                msg.dtype,
            )
            if msg.attention:
                log.info("worker %d: %s", slot.index, msg.attention)
            if msg.warmup_seconds:
                cache = f" (compile cache {msg.compile_cache})" if msg.compile_cache else ""
                log.info("worker %d warmed up in %.1f s%s", slot.index, msg.warmup_seconds, cache)
            for warning in msg.warnings:
                log.warning("worker %d: %s", slot.index, warning)
            if not self._announced_ready and all(s.state in (W_READY, W_BUSY) for s in self.slots):
                self._announced_ready = True
                log.info(
                    "ready: %d worker(s) loaded; predictions run at %s/v1/prediction",
                    len(self.slots),
                    self.settings.base_url,
                )
            self.wake()
        elif isinstance(msg, WorkerWarming):
            if slot.state == W_STARTING:
                if slot.warming is None:
                    log.info("worker %d loaded the model; %s", slot.index, msg.reason)
                slot.warming = msg.reason
        elif isinstance(msg, SetupFailed):
            slot.state, slot.setup_error = W_FAILED, msg.reason
            log.error("worker %d could not load the model: %s", slot.index, msg.reason)
        elif isinstance(msg, JobLog):
            await self.jobs.record_log(slot, msg)
        elif isinstance(msg, JobPreview):
            await self.jobs.record_preview(slot, msg)
        elif isinstance(msg, GpuFreeSoon):
            self.jobs.gpu_free_soon(slot, msg)
        elif isinstance(msg, JobStarted):
            self.jobs.job_started(slot, msg)
            if msg.idle_gap_s is not None:
                gap_ms = msg.idle_gap_s * 1e3
                log.debug("worker %d: GPU idle %.2f ms before %s", slot.index, gap_ms, msg.prediction_id)
                if self._observe_idle_gap is not None:
                    self._observe_idle_gap(msg.idle_gap_s)
        elif isinstance(msg, JobSucceeded | JobFailed | JobCancelled):
            await self.jobs.record_end(slot, msg)

    # -- ends the store must take (see jobs.py) -------------------------------------------
    def store_failed(self, exc: BaseException) -> None:
        """A store call raised: /health-check says so until a write goes through again."""
        self.jobs.store_failed(exc)

    def store_working(self) -> None:
        self.jobs.store_working()

    async def retry_pending_ends(self) -> bool:
        """One attempt at every kept end; True when one of them was settled."""
        return await self.jobs.retry_pending_ends()

    @property
    def pending_ends(self) -> int:
        """Ends (results, lost workers) the store has not taken yet."""
        return self.jobs.pending_ends

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
        await self.jobs.settle_lost(slot, code)  # kept and retried if the store refuses it
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

    # -- jobs -----------------------------------------------------------------------------
    def wake(self) -> None:
        """Something may be runnable now (a create, a worker freed): dispatch without waiting."""
        self.jobs.wake()

    async def cancel(self, prediction_id: str) -> None:
        """Tell the worker running this prediction to stop at its next step."""
        await self.jobs.cancel(prediction_id)

    async def _watchdog_loop(self) -> None:
        while not self._stopped:
            await asyncio.sleep(WATCHDOG_S)
            self.check_timeouts(time.monotonic())

    def check_timeouts(self, now: float) -> None:
        """Kill the worker of a job running (or finishing) past job_timeout_s, or of a load past
        load_timeout_s."""
        cfg = self.settings.workers
        for slot in self.slots:
            late = [job for job, started in slot.held() if now - started > cfg.job_timeout_s]
            if slot.state in (W_BUSY, W_READY) and late and not slot.timed_out:
                log.error(
                    "prediction %s timed out after %g s; killing worker %d",
                    late[0].id,
                    cfg.job_timeout_s,
                    slot.index,
                )
                slot.timed_out, slot.timed_out_job = True, late[0].id
                slot.state = W_STOPPED  # no job goes to it, even if a result is already on its way
                slot.process.kill()
            elif (
                slot.state == W_STARTING and now - slot.started_at > cfg.load_timeout_s and not slot.timed_out
            ):
                slot.timed_out = True
                slot.state = W_FAILED
                slot.setup_error = f"loading the model took longer than {cfg.load_timeout_s:g} s"
                slot.process.kill()

    # -- health ---------------------------------------------------------------------------
    def health(self) -> tuple[str, dict[str, Any]]:
        states = [s.state for s in self.slots]
        store = self.store_health.info()
        if self.jobs.pending_ends:
            store["unrecorded_ends"] = self.jobs.pending_ends
        details: dict[str, Any] = {"workers": [self.slot_info(s) for s in self.slots], "store": store}
        details["models"] = {entry.slug: self.model_health(entry.spec_name) for entry in self.models.entries}
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
        warming = [
            f"worker {s.index}: {s.warming}" for s in self.slots if s.state == W_STARTING and s.warming
        ]
        if warming:
            details["reason"] = "; ".join(warming)
        return STARTING, details

    @property
    def several_models(self) -> bool:
        return len(self.settings.model_specs) > 1

    def slots_of(self, spec_name: str) -> list[WorkerSlot]:
        """The slots whose workers run the configured model ``spec_name``."""
        return [s for s in self.slots if s.spec is None or s.spec.name == spec_name]

    def model_health(self, spec_name: str) -> dict[str, Any]:
        """One model's line in /health-check's ``models``: its state and how many workers serve it."""
        return model_line([s.state for s in self.slots_of(spec_name)])

    def slot_info(self, slot: WorkerSlot) -> dict[str, Any]:
        info: dict[str, Any] = {"index": slot.index, "state": slot.state}
        if slot.spec is not None and self.several_models:
            info["model"] = slot.spec.name
        if slot.gpu is not None:
            info["gpu"] = slot.gpu
        if slot.ready is not None:
            info.update(device=slot.ready.device, dtype=slot.ready.dtype, tiny_model=slot.ready.is_tiny)
        if slot.setup_error:
            info["error"] = slot.setup_error
        if slot.state == W_STARTING and slot.warming:
            info["warming"] = slot.warming
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
        while time.monotonic() < self._drain_deadline and self.jobs.busy:
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
            if slot.held():
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
        await self.jobs.stop()  # a last try at the kept ends; the next start's recovery settles the rest
