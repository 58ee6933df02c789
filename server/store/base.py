"""The prediction store: the single source of truth for every prediction's state.

One interface; this build has one implementation, SQLite (``sqlite.py``). Rules every
implementation keeps:

- a prediction row holds everything the GET answer needs;
- the queue is FIFO on ``created_at`` (ties broken by insertion order);
- ``claim_next`` is atomic: two workers never get the same prediction;
- terminal states (success, error, cancelled) are sticky: no method changes a terminal row's
  status, output or error again;
- every method is synchronous and thread-safe; the async API calls them from a thread pool.
"""

from __future__ import annotations

import abc
from typing import Any

from server.predictions.model import ERROR, WORKER_LOST, CancelOutcome, ListFilter, Prediction


class PredictionStore(abc.ABC):
    """Abstract store. See the module docstring for the rules."""

    @abc.abstractmethod
    def create(self, prediction: Prediction, max_in_flight: int | None = None) -> None:
        """Insert a new prediction (status starting). When ``max_in_flight`` is set, atomically
        refuse with InFlightLimitExceeded if the owner already has that many starting/processing."""

    @abc.abstractmethod
    def get(self, prediction_id: str) -> Prediction | None: ...

    @abc.abstractmethod
    def list(self, flt: ListFilter) -> tuple[list[Prediction], int]:
        """The owner's predictions, newest first, and the total matching the filter."""

    @abc.abstractmethod
    def claim_next(self, worker_id: str) -> Prediction | None:
        """Atomically take the oldest starting prediction: status processing, started_at now,
        attempts + 1, worker_id set. None when the queue is empty."""

    @abc.abstractmethod
    def append_logs(self, prediction_id: str, text: str) -> None:
        """Append text to the logs (any status but terminal ones; a no-op there)."""

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
    ) -> bool:
        """Move a non-terminal prediction to a terminal status (appending ``logs``, merging
        ``extra``). Returns False, changing nothing, if it was already terminal."""

    @abc.abstractmethod
    def request_cancel(self, prediction_id: str) -> CancelOutcome: ...

    @abc.abstractmethod
    def requeue(self, prediction_id: str, note: str, *, never_ran: bool = False) -> bool:
        """Put a processing prediction back at the head of the queue (retry after a lost
        worker). ``never_ran``: its worker never got it, so the claim's attempt is given back.
        Returns False if it was not processing."""

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

    def recover_after_restart(self, max_attempts: int = 1) -> list[tuple[str, str]]:
        """Called once at start, before any worker runs: every prediction left in processing
        by a dead process is requeued when it has attempts left, else ended in error
        'worker lost'. Returns (id, 'requeued' | 'failed') pairs."""
        outcomes = []
        for pred in self.running():
            if pred.attempts < max_attempts:
                if self.requeue(pred.id, f"Requeued after the worker was lost (attempt {pred.attempts})."):
                    outcomes.append((pred.id, "requeued"))
            elif self.finish(
                pred.id,
                ERROR,
                error=WORKER_LOST,
                logs="Worker lost: the process running this prediction died.\n",
            ):
                outcomes.append((pred.id, "failed"))
        return outcomes

    def reassign_owner(self, old_owner: str, new_owner: str) -> int:
        """Give every prediction of ``old_owner`` to ``new_owner`` (``keys adopt-open``); how many.
        Their ``webhook_signer`` stays ``old_owner`` (recorded now on rows made without one)."""
        raise NotImplementedError(f"{type(self).__name__} cannot hand predictions to another owner")

    def is_outage(self, exc: BaseException) -> bool:
        """Whether an exception from this store means it cannot be used right now (disk full,
        file unreadable, locked too long), so the same call may succeed later. Anything else is a
        bug or bad data, which no retry mends."""
        return isinstance(exc, OSError)

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
