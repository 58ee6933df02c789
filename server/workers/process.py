"""The worker process: loads the model once, then runs one prediction at a time on the GPU.

Started with the ``spawn`` method (never forked after CUDA is initialised). It talks to the
supervisor only through its Pipe end: a reader thread takes RunJob / CancelJob / Shutdown
messages, the main thread runs jobs and sends events back. The child never touches the store.

With ``overlap_finishing`` the main thread runs only a job's GPU stage (``FluxGenerator.start``)
and hands the latents to a finishing thread (decode, safety, encoding, the result message); it
says ``GpuFreeSoon`` as the last step begins, so the next RunJob is already queued here when the
GPU stage ends. Each job's images stay in its own ``Denoised``: two predictions never mix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.workers import faults
from server.workers.messages import (
    CancelJob,
    GpuFreeSoon,
    JobCancelled,
    JobFailed,
    JobLog,
    JobPreview,
    JobStarted,
    JobSucceeded,
    OutputImage,
    RunJob,
    SetupFailed,
    Shutdown,
    WorkerReady,
    WorkerWarming,
)

if TYPE_CHECKING:
    from pipelines.generate import Denoised
    from pipelines.loras.resolve import AdapterFiles, AdapterFilesConfig

log = logging.getLogger("fluxserve.worker")

# Previews are written to the store: at most about two a second per job (the last step's always).
PREVIEW_MIN_INTERVAL_S = 0.5


@dataclass
class WorkerConfig:
    """What a worker needs, as plain picklable data."""

    model: dict[str, Any]  # a ModelSpec as a dict
    gpu: str | None = None  # a CUDA_VISIBLE_DEVICES entry; None: leave it as it is
    max_image_bytes: int = 10 * 2**20
    max_image_pixels: int = 40_000_000
    fetch_timeout_s: float = 15
    allow_private_addresses: bool = False
    allowed_hosts: list[str] = field(default_factory=list)
    progress_interval_s: float = 0.25
    preview_every_n_steps: int = 4  # a preview every this many steps (and at the last), when asked
    preview_max_side: int = 256
    preview_taesd: str | None = None  # an AutoencoderTiny folder; None: the linear latent->RGB factors
    nice: int = 0  # added to the process's nice value at start
    adapter_files: AdapterFilesConfig | None = None  # where LoRA sources resolve (None: no LoRA)
    lora_max_loaded: int = 4  # LoRA adapters kept loaded
    lora_hotswap_max_rank: int = 64  # the rank of a compiled model's adapter slots
    embed_parameters: bool = True  # outputs.embed_parameters: generation parameters inside the files
    compile_cache_dir: str | None = (
        None  # torch.compile's caches, kept across restarts (None: torch's default)
    )
    fault_injection: bool = False  # tests only: prompts containing [[fault:...]] cause real faults
    overlap_finishing: bool = True  # workers.overlap_finishing: finish images beside the next GPU stage
    log_level: str = "info"


class _Outbox:
    """The pipe's sending side, shared by the main and the finishing thread (a Connection's send
    is not thread-safe: two messages must not interleave)."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, msg: Any) -> None:
        with self._lock:
            self._conn.send(msg)


class _JobControl:
    """The job on the GPU and its cancel flag, shared by the reader thread and the main thread;
    the jobs being finished, whose cancels need no flag (they have no step left: the supervisor
    discards their images)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: str | None = None
        self.cancel = threading.Event()
        self.cancelled_early: set[str] = set()
        self.finishing: set[str] = set()

    def start(self, prediction_id: str) -> None:
        with self.lock:
            self.current = prediction_id
            self.cancel.clear()
            if prediction_id in self.cancelled_early:
                self.cancelled_early.discard(prediction_id)
                self.cancel.set()

    def request_cancel(self, prediction_id: str) -> None:
        with self.lock:
            if self.current == prediction_id:
                self.cancel.set()
            elif prediction_id not in self.finishing:  # the RunJob may still be in the pipe behind this
                self.cancelled_early.add(prediction_id)

    def done(self) -> None:
        with self.lock:
            self.current = None

    def finishing_started(self, prediction_id: str) -> None:
        with self.lock:
            self.finishing.add(prediction_id)

    def finishing_done(self, prediction_id: str) -> None:
        with self.lock:
            self.finishing.discard(prediction_id)


class _IdleGap:
    """Measures how long the GPU thread sat without work while a job was queued: from the end of
    the previous GPU stage (or the job's creation, if later) to taking the job. Wall-clock time,
    to compare with the prediction's ``created_at``."""

    def __init__(self) -> None:
        self.gpu_stage_ended: float | None = None  # None: no GPU stage yet in this process

    def ended(self) -> None:
        self.gpu_stage_ended = time.time()

    def before(self, job: RunJob) -> float | None:
        """The gap before this job (None before the first one, or with a clock running behind)."""
        if self.gpu_stage_ended is None:
            return None
        gap = time.time() - max(self.gpu_stage_ended, job.created_at)
        return gap if gap >= 0 else None


@dataclass
class _Finishing:
    """A job past its GPU stage: its latents and what its result message needs."""

    job: RunJob
    denoised: Denoised
    logs: list[str]
    emit: Any  # Callable[[str], None]: a progress line, sent and kept in logs


class _Finisher:
    """The finishing thread: turns each job's latents into its result message and sends it, in
    the order the jobs were denoised. ``close`` finishes what is queued, then ends the thread."""

    def __init__(self, generator, out: _Outbox, control: _JobControl) -> None:
        self._generator, self._out, self._control = generator, out, control
        self._queue: queue.Queue[_Finishing | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="finishing")
        self._thread.start()

    def put(self, item: _Finishing) -> None:
        self._queue.put(item)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            _send_finished(item, self._generator, self._out, self._control)


def worker_main(conn, config: WorkerConfig) -> None:
    """Entry point of the spawned process."""
    if config.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = config.gpu  # before torch is imported
    if config.compile_cache_dir:
        from pipelines.compile_cache import use_folder

        use_folder(config.compile_cache_dir)  # before torch reads its inductor settings
    if config.adapter_files is None or not config.adapter_files.hub_downloads:
        # Never reach for the hub. huggingface_hub reads this once, when first imported: with
        # LoRA hub downloads allowed it stays unset (the weights load with local_files_only anyway).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # SIGINT goes to the whole process group on Ctrl-C; the supervisor decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s worker %(levelname)s %(message)s")
    if config.nice:
        # Before torch starts its threads: they inherit the priority.
        os.nice(config.nice)

    from pipelines.errors import ModelLoadError
    from pipelines.generate import FluxGenerator
    from pipelines.loading import load_model
    from pipelines.loras.adapters import LoraOptions
    from pipelines.previews import PreviewDecoder
    from pipelines.spec import ModelSpec
    from server.workers.adapter_downloads import adapter_files

    # Read commands from the start, the model load included: if the supervisor dies meanwhile,
    # the pipe's EOF ends this process instead of leaving it loading for minutes.
    jobs: queue.Queue[RunJob | None] = queue.Queue()
    control = _JobControl()
    out = _Outbox(conn)
    threading.Thread(target=_read_commands, args=(conn, jobs, control), daemon=True, name="commands").start()
    spec = ModelSpec.model_validate(config.model)
    try:
        model = load_model(spec)
    except ModelLoadError as exc:
        out.send(SetupFailed(str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - report any load failure instead of dying silently
        out.send(SetupFailed(f"{type(exc).__name__}: {exc}"))
        return
    serves_loras = config.adapter_files is not None and spec.serves_lora
    lora = LoraOptions(config.lora_max_loaded, config.lora_hotswap_max_rank) if serves_loras else None
    generator = FluxGenerator(model, lora)  # LoRA hotswap slots go in before the warm-up compiles
    try:
        warmup_seconds, cache_state = _warm_up(model, config, out)
    except Exception as exc:  # noqa: BLE001 - a model that cannot run its warm-up cannot serve
        log.exception("warm-up failed")
        out.send(SetupFailed(f"warm-up failed: {type(exc).__name__}: {exc}"))
        return
    preview_decoder = PreviewDecoder(config.preview_max_side, config.preview_taesd)
    files = adapter_files(config.adapter_files) if serves_loras and config.adapter_files else None
    # Finishing inline (on this thread) with overlap off, or with CPU offload (not thread-safe).
    finisher = (
        _Finisher(generator, out, control) if config.overlap_finishing and generator.overlap_safe else None
    )
    gap = _IdleGap()
    out.send(
        WorkerReady(
            device=model.device,
            dtype=str(model.dtype).removeprefix("torch."),
            weights=str(model.weights.folder),
            is_tiny=model.is_tiny,
            load_seconds=model.load_seconds,
            warnings=list(model.warnings),
            source="tiny" if model.is_tiny else model.weights.source,
            warmup_seconds=warmup_seconds,
            attention=model.attention.describe() if model.attention is not None else "",
            compile_cache=cache_state,
        )
    )

    while True:
        job = jobs.get()
        if job is None:
            if finisher is not None:
                finisher.close()  # the jobs already denoised still end with their images
            return
        out.send(JobStarted(job.prediction_id, gap.before(job)))
        control.start(job.prediction_id)
        try:
            try:
                outcome = _start_job(job, generator, files, config, out, control, preview_decoder)
            except Exception as exc:  # noqa: BLE001 - a failure outside generation must end the job, not the worker
                log.exception("prediction %s failed", job.prediction_id)
                outcome = JobFailed(job.prediction_id, f"Prediction failed: {type(exc).__name__}: {exc}")
            gap.ended()
            if not isinstance(outcome, _Finishing):
                out.send(outcome)
            elif finisher is not None:
                control.finishing_started(job.prediction_id)
                finisher.put(outcome)
            else:
                _send_finished(outcome, generator, out, control)
        finally:
            control.done()


def _warm_up(model, config: WorkerConfig, out: _Outbox) -> tuple[float, str]:
    """Warm the model up (pipelines/warmup.py) unless its spec says not to, with the compile
    cache of previous starts; (seconds, compile cache state)."""
    from pathlib import Path

    from pipelines.warmup import warm_up_cached

    if not model.spec.warmup:
        return 0.0, ""
    out.send(WorkerWarming("warming up"))
    folder = Path(config.compile_cache_dir).expanduser() if config.compile_cache_dir else None
    report = warm_up_cached(model, folder, say=lambda text: out.send(WorkerWarming(text)))
    log.info("warm-up: %d run(s) in %.2f s", report.runs, report.seconds)
    return report.seconds, report.compile_cache


def _read_commands(conn, jobs: queue.Queue, control: _JobControl) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            # The supervisor is gone: nobody will read our results. Stop now.
            os._exit(0)
        if isinstance(msg, RunJob):
            jobs.put(msg)
        elif isinstance(msg, CancelJob):
            control.request_cancel(msg.prediction_id)
        elif isinstance(msg, Shutdown):
            jobs.put(None)
            return


def _start_job(
    job: RunJob,
    generator,
    files: AdapterFiles | None,
    config: WorkerConfig,
    conn: _Outbox,
    control: _JobControl,
    preview_decoder=None,
) -> _Finishing | JobFailed | JobCancelled:
    """Run one prediction's GPU stage: its final message if it ended there (failed, cancelled),
    else its latents to finish. Progress goes out as JobLog (and, when the job asked for them,
    previews as JobPreview) on the way; with overlap, GpuFreeSoon as the last step begins."""
    from pipelines.generate import pick_seed, total_steps
    from pipelines.images import InputImageError, decode_image
    from pipelines.inputs import INPUT_SCHEMAS, img2img_size
    from pipelines.previews import PreviewRequest
    from server.egress.fetch import AddressPolicy, FetchError, load_image_source
    from server.predictions.model import INVALID_INPUT_IMAGE

    pid = job.prediction_id
    logs: list[str] = []

    def emit(line: str) -> None:
        logs.append(line + "\n")
        conn.send(JobLog(pid, line + "\n"))

    # Resolved and validated when the prediction was created: trusted, not validated again.
    inputs = INPUT_SCHEMAS[job.schema].model_construct(**job.inputs)
    faults.maybe_inject(config.fault_injection, inputs.prompt)
    seed = pick_seed(inputs.seed)
    inputs = inputs.model_copy(update={"seed": seed})
    emit(f"Using seed: {seed}")

    source = None
    if inputs.image:
        policy = AddressPolicy(
            allow_private=config.allow_private_addresses,
            allowed_hosts=list(config.allowed_hosts),
            timeout_s=config.fetch_timeout_s,
            max_bytes=config.max_image_bytes,
        )
        try:
            data = load_image_source(inputs.image, policy, config.max_image_bytes)
            source = decode_image(data, max_pixels=config.max_image_pixels, max_bytes=config.max_image_bytes)
        except (FetchError, InputImageError) as exc:
            return JobFailed(pid, f"{INVALID_INPUT_IMAGE}: {exc}", "".join(logs))
        w, h = img2img_size(*source.size)
        emit(
            f"img2img from a {source.width}x{source.height} image: output {w}x{h}, "
            f"prompt_strength {inputs.prompt_strength}"
        )
    else:
        w, h = inputs.size
        emit(f"Generating {inputs.num_outputs} image(s) at {w}x{h}, {inputs.num_inference_steps} steps")

    last_sent = 0.0

    def gpu_free_soon() -> None:
        if config.overlap_finishing:
            conn.send(GpuFreeSoon(pid))

    if total_steps(inputs, source is not None) <= 1:
        gpu_free_soon()  # its one step is its last

    def on_progress(done: int, total: int) -> None:
        nonlocal last_sent
        faults.maybe_inject(config.fault_injection, inputs.prompt, step=done)  # a fault in this step
        if done == total - 1:
            gpu_free_soon()  # the last step begins now
        now = time.monotonic()
        if done == total or now - last_sent >= config.progress_interval_s:
            last_sent = now
            emit(f"{done}/{total} steps ({100 * done // total}%)")

    previews = None
    if job.previews and preview_decoder is not None:

        def send_preview(done: int, total: int, data: bytes) -> None:
            conn.send(JobPreview(pid, done, total, data))

        previews = PreviewRequest(
            send_preview,
            preview_decoder,
            every_n_steps=config.preview_every_n_steps,
            min_interval_s=PREVIEW_MIN_INTERVAL_S,
        )

    try:
        with contextlib.ExitStack() as held:
            # Each adapter file stays held (not evicted from the cache) while it is loaded.
            loras = _adapter_files(inputs.adapters, files, config, held, emit)
            denoised = generator.start(
                inputs,
                source,
                on_progress=on_progress,
                should_cancel=control.cancel.is_set,
                loras=loras,
                previews=previews,
                embed_parameters=config.embed_parameters,
                model_name=job.model,
            )
    except Exception as exc:  # noqa: BLE001 - one bad job must not take the worker down
        return _failed(pid, exc, logs, conn)
    if denoised.result.cancelled:
        emit("Cancelled: the run stopped and its images were discarded.")
        return JobCancelled(pid, "".join(logs))
    return _Finishing(job, denoised, logs, emit)


def _send_finished(item: _Finishing, generator, conn: _Outbox, control: _JobControl) -> None:
    """Finish a job's images and send its final message (on the finishing thread, or inline)."""
    pid = item.job.prediction_id
    try:
        try:
            outcome = _finish_job(item, generator, conn)
        except Exception as exc:  # noqa: BLE001 - a failure outside generation must end the job, not the worker
            log.exception("prediction %s failed", pid)
            outcome = JobFailed(pid, f"Prediction failed: {type(exc).__name__}: {exc}", "".join(item.logs))
        conn.send(outcome)
    finally:
        control.finishing_done(pid)


def _finish_job(item: _Finishing, generator, conn: _Outbox) -> JobSucceeded | JobFailed | JobCancelled:
    """Decode, check and encode a job's images: its final message."""
    pid, logs, emit = item.job.prediction_id, item.logs, item.emit
    try:
        result = generator.finish(item.denoised)
    except Exception as exc:  # noqa: BLE001 - one bad job must not take the worker down
        return _failed(pid, exc, logs, conn)

    if result.cancelled:
        emit("Cancelled: the run stopped and its images were discarded.")
        return JobCancelled(pid, "".join(logs))
    for warning in result.warnings:
        emit(f"Warning: {warning}")
    emit(f"Generated {len(result.images)} image(s) in {result.timings['predict_time']:.2f} s")
    images = [OutputImage(i.data, i.format, i.content_type, i.width, i.height, i.seed) for i in result.images]
    extra = {
        "seed": result.seed,
        "width": result.width,
        "height": result.height,
        "nsfw_dropped": result.nsfw_dropped,
    }
    return JobSucceeded(pid, images, result.seed, result.timings["predict_time"], "".join(logs), extra)


def _failed(pid: str, exc: Exception, logs: list[str], conn: _Outbox) -> JobFailed:
    """A job's failure as its final message. A fatal device error ends the process here (after
    saying so): the CUDA context is unusable."""
    from pipelines.errors import GenerationError

    if isinstance(exc, GenerationError):
        return JobFailed(pid, str(exc), "".join(logs))
    log.error("prediction %s failed", pid, exc_info=exc)
    if _is_fatal_device_error(exc):
        conn.send(JobFailed(pid, f"GPU error, worker restarting: {exc}", "".join(logs), worker_exiting=True))
        os._exit(70)
    return JobFailed(pid, f"Prediction failed: {type(exc).__name__}: {exc}", "".join(logs))


def _adapter_files(adapters, files, config: WorkerConfig, held: contextlib.ExitStack, emit) -> list:
    """The prediction's LoRA sources as local files (downloaded or found in the cache), each held
    in ``held``; AdapterFetchError (a GenerationError) says which source failed and why."""
    from pipelines.errors import AdapterLoadError
    from pipelines.loras.adapters import LoraRequest
    from pipelines.loras.sources import AdapterSourceError, parse_adapter_source

    if not adapters:
        return []
    if files is None:
        raise AdapterLoadError("This model does not take LoRA adapters on this server.")
    allow_http = config.adapter_files is not None and config.adapter_files.allow_http
    requests = []
    for text, scale in adapters:
        try:
            source = parse_adapter_source(text, allow_http=allow_http)
        except AdapterSourceError as exc:  # checked at create; the settings may have changed since
            raise AdapterLoadError(f"LoRA {text[:200]!r}: {exc}") from None
        started = time.monotonic()
        path = held.enter_context(files.open(source))
        emit(f"LoRA {source.display}: ready in {time.monotonic() - started:.2f} s, scale {scale:g}")
        requests.append(LoraRequest(source.key, path, scale, source.display))
    return requests


def _is_fatal_device_error(exc: BaseException) -> bool:
    """A CUDA error other than out-of-memory leaves the context unusable: restart the process."""
    text = str(exc)
    return "CUDA error" in text or "device-side assert" in text
