"""The delivery store: webhook deliveries waiting to be sent, and each owner's signing secret.

A webhook that must not be lost (the Eachlabs webhook at the end of a prediction, Replicate's
``completed`` event) is a delivery row, written when the prediction ends; the dispatcher
(``server/webhooks/dispatcher.py``) picks due rows, posts them and records each attempt. A server
that stops with rows pending sends them after its next start. Rules every implementation keeps:

- one row per (prediction, event): enqueueing the same event twice keeps the first row, so two
  paths noticing the same end (the worker host and a cancel route) send one webhook;
- claiming rows pushes their ``next_attempt_at`` forward by a lease, atomically, so a second
  process sharing the store does not post them at the same time; a process that dies mid-attempt
  leaves the row to be retried once the lease has passed (delivery is at least once);
- Replicate webhooks are signed with a secret per owner (the key id that made the prediction;
  ``anonymous`` in open mode): random, made on first use, replaced by a rotation, the same for
  every process sharing the store. A secret is never derived from the key, so no key holder can
  compute another's;
- every method is synchronous and thread-safe.
"""

from __future__ import annotations

import abc
import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
SIGNING_SECRET_PREFIX = "whsec_"
SIGNING_KEY_BYTES = 32


@dataclass
class Delivery:
    id: str  # also the Standard Webhooks message id
    prediction_id: str
    event: str  # 'finished' (Eachlabs) or 'completed' (Replicate)
    flavour: str  # 'eachlabs' or 'replicate' (signed at send time)
    url: str
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    next_attempt_at: float = 0.0
    state: str = PENDING  # pending, delivered, failed
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


def new_signing_secret() -> str:
    """``whsec_<base64 of 32 random bytes>``."""
    return SIGNING_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SIGNING_KEY_BYTES)).decode()


class DeliveryStore(abc.ABC):
    """Abstract delivery store. See the module docstring for the rules."""

    @abc.abstractmethod
    def enqueue(
        self,
        prediction_id: str,
        event: str,
        flavour: str,
        url: str,
        payload: Any,
        headers: dict[str, str] | None = None,
        *,
        now: float | None = None,
    ) -> str | None:
        """Add a pending delivery, due now. Returns its id, or None when this prediction already
        has a delivery for this event (nothing is changed)."""

    @abc.abstractmethod
    def get(self, delivery_id: str) -> Delivery | None: ...

    @abc.abstractmethod
    def with_deliveries(self, prediction_ids: list[str]) -> set[str]:
        """Those of the ids that have at least one delivery row."""

    @abc.abstractmethod
    def for_prediction(self, prediction_id: str) -> list[Delivery]:
        """The prediction's deliveries, oldest first."""

    @abc.abstractmethod
    def claim_due(self, lease_s: float, limit: int = 16, *, now: float | None = None) -> list[Delivery]:
        """Pending deliveries due now, oldest first; each is leased (its next_attempt_at moved
        ``lease_s`` ahead) so no other process takes it while this one posts it."""

    @abc.abstractmethod
    def record_attempt(
        self,
        delivery_id: str,
        attempts: int,
        state: str,
        *,
        next_attempt_at: float | None = None,
        error: str | None = None,
        now: float | None = None,
    ) -> None:
        """Store the outcome of attempt number ``attempts``: delivered, failed for good, or
        pending again at ``next_attempt_at``."""

    @abc.abstractmethod
    def release(self, delivery_id: str, *, due_at: float | None = None, now: float | None = None) -> None:
        """Give a leased delivery back, due at ``due_at`` (default now), its attempt count
        unchanged: its attempt did not run to the end, or did not start."""

    @abc.abstractmethod
    def next_due_at(self) -> float | None:
        """When the earliest pending delivery is due (None when nothing is pending)."""

    @abc.abstractmethod
    def prune(self, finished_before: float) -> int:
        """Delete delivered and failed rows last touched before the given time; how many."""

    @abc.abstractmethod
    def signing_secret(self, owner: str) -> str:
        """``owner``'s webhook signing secret: made on first use, then the same until rotated."""

    @abc.abstractmethod
    def rotate_signing_secret(self, owner: str) -> str:
        """Replace ``owner``'s secret with a new random one and return it. The old one stops
        signing at once: every delivery from now on, queued ones included, uses the new one."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the store holds open."""
