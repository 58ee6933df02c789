"""The key store: API keys created on the command line, kept as hashes.

Only ``sha256(key)`` is stored: the key itself is shown once, by :meth:`KeyStore.create`, and never
again. Rules every implementation keeps:

- active names are unique. A revoked key keeps its row (and its name, for the record), and its
  name can be given to a new key: rotating "ci" is ``revoke("ci")`` then ``create("ci")``;
- rows are never deleted, so "this server has had keys" stays true after every key is revoked
  (see ``KeyRing.open``: revoking the last key must lock the server, not open it);
- ``touch`` is best effort and throttled (one write a minute per key): a busy store skips it;
- every method is synchronous and thread-safe; the async API calls them from a thread pool.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("server.keystore")  # the name it had before the move: log filters keep working

KEY_PREFIX = "fsk_"
KEY_ID_HEX_CHARS = 32
TOUCH_INTERVAL_S = 60.0
NAME_MAX_LEN = 64
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Names the KeyRing gives to keys that are not in the store.
RESERVED_NAMES = ("anonymous",)
RESERVED_PREFIXES = ("config-",)


def hash_key(key: str) -> str:
    """sha256 of the key, 64 hex chars: what the store keeps and looks up."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_id_from_hash(key_hash: str) -> str:
    """The owner id of the key whose sha256 hex is ``key_hash`` (same as ``auth.key_id_for(key)``)."""
    return key_hash[:KEY_ID_HEX_CHARS]


def validate_name(name: object) -> str:
    """Return ``name`` if it may name a stored key, else raise ValueError saying why."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("key name must be a non-empty string")
    if len(name) > NAME_MAX_LEN:
        raise ValueError(f"key name must be at most {NAME_MAX_LEN} characters")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid key name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    lowered = name.lower()
    if lowered in RESERVED_NAMES or lowered.startswith(RESERVED_PREFIXES):
        raise ValueError(f"key name {name!r} is reserved")
    return name


@dataclass(frozen=True)
class KeyInfo:
    """What the store knows about a key. Holds no secret: not the key, not its hash."""

    name: str
    created_at: float  # unix seconds
    last_used_at: float | None
    revoked_at: float | None
    key_id: str

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class KeyStore(abc.ABC):
    """Abstract key store. See the module docstring for the rules."""

    def create(self, name: str) -> str:
        """Make a new key named ``name`` and return it: the only time the key is seen.
        ValueError for an invalid or reserved name, or one an active key has."""
        validate_name(name)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_hash = hash_key(key)
        if not self._insert_key(key_hash, key_id_from_hash(key_hash), name, self._clock()):
            raise ValueError(f"an active key named {name!r} already exists")
        return key

    @abc.abstractmethod
    def _insert_key(self, key_hash: str, key_id: str, name: str, created_at: float) -> bool:
        """Store a new key's row; False, storing nothing, when an active key has that name."""

    @abc.abstractmethod
    def list(self) -> list[KeyInfo]:
        """Every key ever created, revoked ones included, oldest first."""

    @abc.abstractmethod
    def active(self, name: str) -> KeyInfo | None:
        """The active key named ``name``; None when there is none (unknown or revoked)."""

    @abc.abstractmethod
    def revoke(self, name: str) -> bool:
        """Revoke the active key named ``name``. False when there is none."""

    @abc.abstractmethod
    def lookup(self, key_hash: str) -> KeyInfo | None:
        """The active key whose sha256 hex is ``key_hash``; None if unknown or revoked."""

    @abc.abstractmethod
    def has_keys(self) -> bool:
        """True once any key has been created, even if every key is revoked since."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._touch_lock = threading.Lock()  # guards _last_touch
        self._last_touch: dict[str, float] = {}

    def touch(self, key_id: str) -> None:
        """Record that ``key_id`` was used now; at most one write a minute per key, best effort:
        a store that cannot take the write skips it rather than fail the request."""
        now = self._clock()
        with self._touch_lock:
            last = self._last_touch.get(key_id)
            if last is not None and now - last < TOUCH_INTERVAL_S:
                return
            self._last_touch[key_id] = now
        try:
            self._record_use(key_id, now)
        except Exception as exc:  # noqa: BLE001 - never fail a request for this
            log.warning("could not record key use for key_id %s: %s", key_id, exc)

    @abc.abstractmethod
    def _record_use(self, key_id: str, when: float) -> None:
        """Write ``last_used_at`` (``touch`` throttles the calls)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the store holds open. Call it once no thread uses the store."""
