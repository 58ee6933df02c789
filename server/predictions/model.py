"""A prediction, its statuses, and the small value types the store and the contracts share."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

# Raised by the stores; defined with the other domain errors, importable from here too.
from server.predictions.errors import InFlightLimitExceeded  # noqa: F401


class Status(enum.StrEnum):
    """A prediction's status. A ``str``: it compares equal to, and serialises as, its value."""

    STARTING = "starting"  # queued, or handed to a worker that has not begun
    PROCESSING = "processing"  # a worker runs it
    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


STARTING = Status.STARTING
PROCESSING = Status.PROCESSING
SUCCESS = Status.SUCCESS
ERROR = Status.ERROR
CANCELLED = Status.CANCELLED
ALL_STATUSES = tuple(Status)
IN_FLIGHT = (STARTING, PROCESSING)
TERMINAL = (SUCCESS, ERROR, CANCELLED)

WORKER_LOST = "worker lost"
# How the error of a prediction whose input image could not be used begins (the client's mistake).
INVALID_INPUT_IMAGE = "Invalid input image"
# Prediction.extra: the owner whose webhook secret signs the prediction's webhooks (the owner when
# it was made). Absent on rows from before it was recorded: the owner then.
WEBHOOK_SIGNER = "webhook_signer"
# Prediction.extra: whether its create asked for live previews (absent: the server's default).
PREVIEWS = "previews"


@dataclass
class Prediction:
    id: str
    owner: str  # the API key's id (a digest), never the key itself
    model: str
    input: dict[str, Any]  # the client's input object, as sent (echoed back on GET)
    # The inputs resolved at create (model defaults applied, validated): what the worker runs,
    # trusted downstream. Empty on rows made before it was stored (resolved at dispatch then).
    params: dict[str, Any] = field(default_factory=dict)
    status: Status = STARTING
    output: list[str] = field(default_factory=list)  # stored file names, in order; URLs are built on read
    logs: str = ""
    error: str | None = None
    created_at: float = 0.0  # unix seconds
    started_at: float | None = None
    completed_at: float | None = None
    predict_time: float | None = None
    attempts: int = 0
    worker_id: str | None = None  # "<host id>:<pid>:w<slot>.<generation>" while a worker holds it
    lease_expires_at: float | None = None  # unix seconds; the worker's heartbeats push it forward
    cancel_requested: bool = False
    data_removed: bool = False
    webhook_url: str | None = None
    webhook_secret: str | None = None
    # Small free-form facts some front end needs (the API flavour that created it, Replicate's
    # webhook filter, the seed used...). JSON-serialisable.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def lease(self) -> Lease | None:
        """The claim a worker holds on this prediction while it runs it (None when none does)."""
        if self.worker_id is None:
            return None
        return Lease(self.id, self.worker_id, self.attempts)

    def allows(self, lease: Lease | None) -> bool:
        """Whether a write under ``lease`` may change this prediction: always without a lease,
        else only while that worker holds it for that attempt (fencing)."""
        return lease is None or lease.holds(self.status, self.worker_id, self.attempts)

    @property
    def webhook_signer(self) -> str:
        """Whose secret signs this prediction's webhooks: its owner when it was made, which a
        later ``reassign_owner`` (``keys adopt-open``) does not change."""
        return self.extra.get(WEBHOOK_SIGNER) or self.owner

    def wants_previews(self, default: bool) -> bool:
        """Whether its worker makes live previews: as its create asked, else ``default``."""
        asked = self.extra.get(PREVIEWS)
        return default if asked is None else bool(asked)

    @property
    def queue_time(self) -> float | None:
        if self.started_at is None:
            return None
        return max(0.0, self.started_at - self.created_at)


@dataclass(frozen=True)
class Lease:
    """Which worker runs a prediction, and for which attempt. A write made under a lease (a
    result, a log line, a requeue) is refused once the prediction is no longer held by that
    worker for that attempt: its lease expired and another worker took the job (fencing)."""

    prediction_id: str
    worker_id: str
    attempt: int

    def holds(self, status: str, worker_id: str | None, attempts: int) -> bool:
        """Whether a prediction in this state (its status, worker and attempt) is still held under
        this lease: the one fencing rule, for a loaded Prediction and a store's row alike."""
        return status == PROCESSING and worker_id == self.worker_id and attempts == self.attempt


@dataclass(frozen=True)
class Preview:
    """The newest live preview of a running prediction: a small WebP image, made after ``step``
    steps. Only the newest is kept, and none once the prediction ends."""

    step: int
    data: bytes
    content_type: str = "image/webp"


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"  # was queued: now cancelled, it will never run
    REQUESTED = "requested"  # is running: the flag is set, the worker stops at its next step
    ALREADY_FINISHED = "already_finished"  # terminal: left as it is
    NOT_FOUND = "not_found"


@dataclass
class ListFilter:
    owner: str
    limit: int = 20
    offset: int = 0
    status: str | None = None
    model: str | None = None
    created_from: float | None = None  # inclusive, unix seconds
    created_to: float | None = None  # inclusive, unix seconds
    q: str | None = None  # a case-insensitive substring of the input's prompt
