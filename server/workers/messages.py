"""Messages between the supervisor (parent) and a worker process (child), over a multiprocessing Pipe.

Small picklable dataclasses; the child never touches the store, the parent never touches torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# -- parent -> child -----------------------------------------------------------------------


@dataclass
class RunJob:
    prediction_id: str
    inputs: dict[str, Any]  # the model's inputs as a dict, validated before it is sent: the worker trusts it
    attempt: int = 1
    schema: str = "flux-dev"  # their pipelines.inputs.INPUT_SCHEMAS key
    model: str | None = None  # the prediction's model slug (None: the worker's model name)
    previews: bool = False  # send a JobPreview every few steps
    created_at: float = 0.0  # the prediction's (unix seconds): the worker's idle-gap measure needs it


@dataclass
class CancelJob:
    prediction_id: str


@dataclass
class Shutdown:
    pass


# -- child -> parent -----------------------------------------------------------------------


@dataclass
class WorkerReady:
    device: str
    dtype: str
    weights: str
    is_tiny: bool
    load_seconds: float
    warnings: list[str] = field(default_factory=list)
    source: str = ""  # where the weights came from: folder, hf-cache or tiny
    warmup_seconds: float = 0.0  # the warm-up run after loading (compiling, when a mode is compiled)
    attention: str = ""  # the attention backend in use, with what was measured for `auto`
    compile_cache: str = ""  # "hit" / "miss" for a compiled model's cache of a previous start


@dataclass
class WorkerWarming:
    """Loaded, now warming up (compiling, for a compiled mode): health says STARTING with this reason."""

    reason: str


@dataclass
class SetupFailed:
    reason: str


@dataclass
class JobLog:
    prediction_id: str
    text: str  # whole lines, each ending in "\n"


@dataclass
class GpuFreeSoon:
    """The job's GPU stage is about to end (its last denoising step began): the next job may be
    sent now, so it waits in the worker's queue instead of the GPU waiting for it. The job itself
    still ends with its own JobSucceeded / JobFailed / JobCancelled once its images are finished."""

    prediction_id: str


@dataclass
class JobStarted:
    """The worker's GPU thread took the job from its queue (a job sent ahead may wait there).
    ``idle_gap_s``: how long the GPU thread sat without work while this job was already queued,
    from the end of the previous GPU stage (or the job's creation, if later); None for the first."""

    prediction_id: str
    idle_gap_s: float | None = None


@dataclass
class JobPreview:
    """The newest preview of a running job (a small WebP image); only the newest is kept."""

    prediction_id: str
    step: int  # steps done when it was made, across all images
    total_steps: int
    data: bytes


@dataclass
class OutputImage:
    data: bytes
    extension: str
    content_type: str
    width: int
    height: int
    seed: int


@dataclass
class JobSucceeded:
    prediction_id: str
    images: list[OutputImage]
    seed: int
    predict_time: float
    logs: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobFailed:
    prediction_id: str
    error: str
    logs: str = ""
    worker_exiting: bool = False  # the worker exits right after (a fatal device error): send it no job


@dataclass
class JobCancelled:
    prediction_id: str
    logs: str = ""
