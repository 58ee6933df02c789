"""What can go wrong with a prediction, in the domain's words.

The service raises these; each HTTP contract turns them into its own status and body in one place
(Eachlabs: ``{"error", "status", "details"}``; Replicate: ``{"detail", "status", "title"}``), so
no contract matches on another's message text.
"""

from __future__ import annotations


class PredictionError(Exception):
    """Base of the domain's errors."""


class InvalidInput(PredictionError):
    """The create request cannot become a prediction. ``fields`` names each bad field and why,
    in order: an input field by its name (``prompt``, ``image``...), or one of the request's own
    parts, ``model``, ``input`` (the input object as a whole), ``webhook_url``, ``webhook_secret``."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


class InFlightLimitExceeded(PredictionError):
    """The owner already has as many predictions starting or processing as it may."""

    def __init__(self, in_flight: int, limit: int) -> None:
        super().__init__(f"{in_flight} predictions in flight (limit {limit})")
        self.in_flight = in_flight
        self.limit = limit


class NotAccepting(PredictionError):
    """No new prediction is taken now. ``message`` says why in a line; ``reason`` adds the
    detail when there is one; ``retry_after_s`` when trying again later may help."""

    def __init__(self, message: str, reason: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.retry_after_s = retry_after_s


class ModelUnavailable(NotAccepting):
    """The model failed to load on every worker: nothing could run a new prediction. ``model``:
    the one model of several that did (the others still take predictions)."""

    def __init__(self, reason: str | None, model: str | None = None) -> None:
        if model is None:
            message = "Model failed to load; not accepting predictions"
        else:
            message = f"Model {model} failed to load; not accepting predictions for it"
        super().__init__(message, reason)
        self.model = model


class ModelNotServed(ModelUnavailable):
    """The model is configured but no live worker serves it (none planned on this server, or no
    live worker host reports it): a prediction for it would wait for nobody."""

    def __init__(self, model: str, reason: str) -> None:
        NotAccepting.__init__(
            self, f"Model {model} has no live worker; not accepting predictions for it", reason
        )
        self.model = model


class ShuttingDown(NotAccepting):
    """The server is stopping: it finishes what runs and takes nothing new."""

    def __init__(self) -> None:
        super().__init__("Server is shutting down; not accepting predictions", retry_after_s=30)


class StoreUnreachable(NotAccepting):
    """The shared database cannot be reached (restarting, network): nothing was made; the same
    request succeeds once it is back."""

    RETRY_AFTER_S = 5

    def __init__(self) -> None:
        super().__init__(
            "The prediction database cannot be reached; try again shortly",
            "nothing was stored; every accepted prediction is kept",
            retry_after_s=self.RETRY_AFTER_S,
        )


class CreateFailed(PredictionError):
    """The store did not take the new prediction (disk full, database locked too long): nothing
    was made, and the same request may succeed later."""


class NotFound(PredictionError):
    """No such prediction for this owner (another owner's is indistinguishable from none)."""


class AlreadyFinished(PredictionError):
    """A cancel came after the end; the prediction was left as it is."""

    def __init__(self, status: str) -> None:
        super().__init__(f"Prediction already finished with status {status}")
        self.status = status


class StillRunning(PredictionError):
    """A delete of a prediction that has not ended: it is cancelled first."""

    def __init__(self, status: str) -> None:
        super().__init__(f"Prediction is {status}; cancel it first")
        self.status = status
