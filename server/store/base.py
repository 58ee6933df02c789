"""The prediction store: the single source of truth for every prediction's state.

One interface; this build has one implementation, SQLite (``sqlite/store.py``). Rules every
implementation keeps:

- a prediction row holds everything the GET answer needs, and ``params`` (the inputs resolved
  at create, which the worker runs);
- the queue is fair across keys: ``claim_next`` takes, among each key's oldest queued
  prediction, the one of the key with the fewest running, then of the key whose last prediction
  started longest ago (round robin), then the oldest; one key's own predictions run in order of
  ``created_at`` (ties broken by insertion order), so a single key sees a FIFO queue;
- ``claim_next`` is atomic: two workers never get the same prediction;
- terminal states (success, error, cancelled) are sticky: no method changes a terminal row's
  status, output or error again;
- every method is synchronous and thread-safe; the async API calls them from a thread pool.

Leases. A claimed prediction is held by its worker: ``worker_id`` (``<host id>:<pid>:w<slot>.
<generation>``), the attempt (``attempts``) and ``lease_expires_at``. The worker host renews
the leases of the jobs it runs (``renew_leases``, every third of the lease). Only a prediction
whose lease has expired is taken from its worker (``recover_expired``, run by every worker host
now and then): requeued when it has attempts left, else ended in error "worker lost". So a store
shared by several hosts never settles another host's live job. A result, a log line or a requeue
written under a lease (``lease=``) is refused, changing nothing, once the row is no longer held
by that worker for that attempt (fencing by attempt): a worker whose lease was taken cannot
record anything.

At start. A host starting again settles its previous run's jobs at once, not a lease later
(``recover_at_start``): every processing row of its own host id (stable across its restarts)
and every expired lease. The caller must hold the store's data lock, so no other live process
runs under that host id. A store only one server can use at a time (SQLite: the database file's
lock, taken before any worker starts) goes further: every processing row found at start belongs
to a dead predecessor, whatever host id it carries, and is settled at once.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Iterable
from typing import Any

from server.predictions.model import PROCESSING, CancelOutcome, Lease, ListFilter, Prediction, Preview
from server.store.hosts import HostReport

DEFAULT_LEASE_S = 30.0
# What recovery writes on a prediction whose worker was lost (the same whoever recovers it).
LOST_REQUEUE_NOTE = "Requeued after the worker was lost (attempt {attempts})."
LOST_LOGS = "Worker lost: the process running this prediction died.\n"
REQUEUED, FAILED = "requeued", "failed"


def takes_preview(status: str, worker_id: str | None, attempts: int, lease: Lease | None) -> bool:
    """Whether a prediction in this state takes a preview: only while it is processing, and under
    ``lease`` (when given) only while that lease holds it. The rule of ``put_preview``, for every store."""
    return status == PROCESSING and (lease is None or lease.holds(status, worker_id, attempts))


class PredictionStore(abc.ABC):
    """Abstract store. See the module docstring for the rules."""

    # Several processes (API replicas, worker hosts) share this store: their pollers use short
    # backstops, since a change may come from another host and its notification may be lost.
    shared: bool = False

    @abc.abstractmethod
    def create(self, prediction: Prediction, max_in_flight: int | None = None) -> None:
        """Insert a new prediction (status starting). When ``max_in_flight`` is set, atomically
        refuse with InFlightLimitExceeded if the owner already has that many starting/processing."""

    @abc.abstractmethod
    def get(self, prediction_id: str) -> Prediction | None: ...

    @abc.abstractmethod
    def list(self, flt: ListFilter) -> tuple[list[Prediction], int]:
        """The owner's predictions, newest first, and the total matching the filter (``q``: a
        case-insensitive substring of ``input.prompt``; a prediction without a text prompt never
        matches one)."""

    @abc.abstractmethod
    def delete(self, prediction_id: str) -> bool:
        """Remove a terminal prediction's row. False, removing nothing, when there is none or it
        has not ended (a queued or running one is cancelled first)."""

    @abc.abstractmethod
    def claim_next(
        self, worker_id: str, lease_s: float = DEFAULT_LEASE_S, models: Collection[str] | None = None
    ) -> Prediction | None:
        """Atomically take the oldest starting prediction: status processing, started_at now,
        attempts + 1, worker_id set, its lease expiring ``lease_s`` from now. None when the
        queue is empty. ``models``: only predictions of these slugs (a worker takes the jobs of
        the models it serves; the fair order is kept among those); None: any."""

    @abc.abstractmethod
    def append_logs(self, prediction_id: str, text: str, *, lease: Lease | None = None) -> None:
        """Append text to the logs (any status but terminal ones; a no-op there, and under a
        ``lease`` the prediction no longer holds)."""

    def append_note(self, prediction_id: str, text: str) -> None:
        """Append text to the logs whatever the status, terminal ones included (notes made after
        the end, such as webhook deliveries); nothing else changes. Implementations override
        this: the default reaches non-terminal rows only."""
        self.append_logs(prediction_id, text)

    @abc.abstractmethod
    def finish(
        self,
        prediction_id: str,
        status: str,
        *,
        output: list[str] | None = None,
        error: str | None = None,
        predict_time: float | None = None,
        logs: str | None = None,
        extra: dict[str, Any] | None = None,
        lease: Lease | None = None,
    ) -> bool:
        """Move a non-terminal prediction to a terminal status (appending ``logs``, merging
        ``extra``). Returns False, changing nothing, if it was already terminal, or ``lease`` is
        given and the prediction is no longer held under it."""

    @abc.abstractmethod
    def request_cancel(self, prediction_id: str) -> CancelOutcome: ...

    @abc.abstractmethod
    def requeue(
        self, prediction_id: str, note: str, *, never_ran: bool = False, lease: Lease | None = None
    ) -> bool:
        """Put a processing prediction back at the head of the queue (retry after a lost
        worker), its lease dropped. ``never_ran``: its worker never got it, so the claim's
        attempt is given back. Returns False if it was not processing (or not under ``lease``)."""

    @abc.abstractmethod
    def renew_leases(self, leases: Iterable[Lease], lease_s: float) -> list[str]:
        """Push the expiry of each lease still held to ``lease_s`` from now (a heartbeat).
        Returns the ids of those no longer held: their job was taken from this worker."""

    @abc.abstractmethod
    def recover_expired(
        self, max_attempts: int = 1, *, host_id: str | None = None, skip: Collection[str] = ()
    ) -> list[tuple[str, str]]:
        """Settle the predictions whose worker is lost: every processing row whose lease has
        expired (or that has none: rows from before leases), and with ``host_id`` every one a
        worker of that host holds. Each is requeued (with the note LOST_REQUEUE_NOTE) when it
        has attempts left, else ended in error "worker lost" (logs LOST_LOGS); a requeued one
        whose cancel was requested is cancelled instead. ``skip``: ids the caller still holds.
        Atomic against a concurrent renewal: a lease renewed meanwhile is left alone. Returns
        (id, 'requeued' | 'failed') pairs."""

    def recover_at_start(self, max_attempts: int, host_id: str) -> list[tuple[str, str]]:
        """Called once when a worker host starts, before its workers run, with the store's data
        lock held: its own host's jobs (left by its previous run) and expired leases are settled
        at once. See the module docstring."""
        return self.recover_expired(max_attempts, host_id=host_id)

    # -- progress -------------------------------------------------------------------------------
    @abc.abstractmethod
    def queue_position(self, prediction: Prediction) -> int | None:
        """How many queued predictions of its model are ahead of a queued one (0: it is next),
        counted in created order (the fair claim may pick another key's first: an estimate);
        None when it is not queued."""

    @abc.abstractmethod
    def put_preview(self, prediction_id: str, step: int, data: bytes, *, lease: Lease | None = None) -> bool:
        """Keep ``data`` as the prediction's newest preview, replacing the one before. Only while
        it is processing (under ``lease`` when given); False, changing nothing, otherwise. Every
        end (finish, requeue, cancel, recovery) drops the preview."""

    @abc.abstractmethod
    def get_preview(self, prediction_id: str) -> Preview | None:
        """The newest preview, or None."""

    @abc.abstractmethod
    def preview_step(self, prediction_id: str) -> int | None:
        """The step of the newest preview (without its bytes), or None."""

    @abc.abstractmethod
    def running(self, worker_id: str | None = None) -> list[Prediction]:
        """Predictions in processing, optionally only those of one worker."""

    @abc.abstractmethod
    def in_flight(self, owner: str) -> int: ...

    @abc.abstractmethod
    def counts_by_status(self) -> dict[str, int]: ...

    @abc.abstractmethod
    def finished_before(self, completed_before: float, limit: int = 500) -> list[Prediction]:
        """Terminal predictions completed before the time whose data was not yet removed."""

    @abc.abstractmethod
    def mark_data_removed(self, prediction_id: str) -> None: ...

    @abc.abstractmethod
    def ended_with_webhook_since(self, completed_after: float) -> list[str]:
        """Ids of terminal predictions with a webhook URL completed at or after the time."""

    def reassign_owner(self, old_owner: str, new_owner: str) -> int:
        """Give every prediction of ``old_owner`` to ``new_owner`` (``keys adopt-open``); how many.
        Their ``webhook_signer`` stays ``old_owner`` (recorded now on rows made without one)."""
        raise NotImplementedError(f"{type(self).__name__} cannot hand predictions to another owner")

    # -- worker hosts (see hosts.py) ------------------------------------------------------------
    def record_host(self, report: HostReport) -> None:
        """Write a worker host's heartbeat: its report, seen now (the store's clock)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no worker hosts")

    def hosts(self, seen_within_s: float) -> list[HostReport]:
        """The hosts seen within the last ``seen_within_s`` seconds, by host id."""
        raise NotImplementedError(f"{type(self).__name__} keeps no worker hosts")

    def forget_host(self, host_id: str) -> None:
        """Remove a host's report (it stopped cleanly)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no worker hosts")

    def is_outage(self, exc: BaseException) -> bool:
        """Whether an exception from this store means it cannot be used right now (disk full,
        file unreadable, locked too long), so the same call may succeed later. Anything else is a
        bug or bad data, which no retry mends."""
        return isinstance(exc, OSError)

    def is_unreachable(self, exc: BaseException) -> bool:
        """Whether an exception means the store's server cannot be reached right now (a shared
        database restarting): the API answers 503 and the client tries again. A local file's
        failure (disk full) is not this: it stays the server's own fault."""
        return False

    def probe_write(self) -> bool:
        """Make one harmless write and say whether the store took it (raises when it does not).
        A store that cannot probe answers False: only real writes then tell that it works again."""
        return False

    def unknown_ids(self, prediction_ids: list[str]) -> list[str]:
        """The ids in the list that the store holds no prediction for."""
        return [pid for pid in prediction_ids if self.get(pid) is None]

    def checkpoint(self, mode: str = "PASSIVE", busy_timeout_ms: int = 0) -> bool:
        """Make the store's main file hold everything committed (SQLite: a WAL checkpoint)."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
