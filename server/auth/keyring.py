"""Who is calling: API keys from the request headers to an :class:`Identity`.

Static keys (config, ``FLUXSERVE_API_KEYS``) and stored keys (created with the CLI, kept as
hashes in a :class:`~server.store.keys.KeyStore`) are used side by side; a prediction's owner is
:func:`key_id_for` of its key, a digest. With no key at all the server runs open (``ANONYMOUS``);
revoking every stored key never reopens it. The rules: docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from server.store.keys import KeyStore, hash_key, key_id_from_hash

MAX_KEY_LEN = 1024  # longer credentials are refused without hashing them
OPEN_RECHECK_S = 1.0  # how often an open ring looks for a newly created stored key

log = logging.getLogger("fluxserve")

_SCHEMES = ("bearer", "token")  # Authorization schemes; "Token" is Replicate's old one
_SPLIT_RE = re.compile(r"[\s,]+")


def key_id_for(key: str) -> str:
    """The stable, non-secret id of ``key``: the first 32 hex chars of its sha256."""
    return key_id_from_hash(hash_key(key))


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. ``key_id`` owns predictions; ``name`` is for people and logs."""

    key_id: str
    name: str


ANONYMOUS = Identity("anonymous", "anonymous")


def _static_entries(static_keys: Iterable[str]) -> list[tuple[bytes, Identity]]:
    """(sha256 digest, identity) of each static key, repeats dropped, named ``config-N`` in order."""
    entries: list[tuple[bytes, Identity]] = []
    seen: set[bytes] = set()
    for key in static_keys:
        if not isinstance(key, str) or not key.strip():
            raise ValueError("static API keys must be non-empty strings")
        key = key.strip()
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        if digest in seen:
            continue
        seen.add(digest)
        entries.append((digest, Identity(key_id_for(key), f"config-{len(entries) + 1}")))
    return entries


def static_identities(static_keys: Iterable[str]) -> list[Identity]:
    """The identities the ring gives the static keys (``config-1``, ``config-2``...)."""
    return [identity for _, identity in _static_entries(static_keys)]


def identity_named(name: str, static_keys: Iterable[str], keystore: KeyStore | None) -> Identity | None:
    """The identity a key called ``name`` has on a server: ``anonymous``, a static key's
    ``config-N``, or an active stored key's name (names the CLI takes). None when there is none.

    Stored names can never be ``anonymous`` or ``config-*`` (``keystore.validate_name``), so the
    three kinds never shadow each other."""
    if name == ANONYMOUS.name:
        return ANONYMOUS
    for identity in static_identities(static_keys):
        if identity.name == name:
            return identity
    info = keystore.active(name) if keystore is not None else None
    return Identity(info.key_id, info.name) if info is not None else None


def extract_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request presents, or None.

    ``X-API-Key: KEY`` first, then ``Authorization: Bearer KEY`` or ``Authorization: Token KEY``
    (scheme case-insensitive). Header names are matched case-insensitively, so a plain dict
    works as well as Starlette's ``Headers``. Empty values and other schemes give None.
    """
    api_key: str | None = None
    authorization: str | None = None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "x-api-key" and api_key is None:
            api_key = value
        elif lowered == "authorization" and authorization is None:
            authorization = value
    if api_key is not None and api_key.strip():
        return api_key.strip()
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() in _SCHEMES and credentials:
            return credentials
    return None


def parse_static_keys(value: str | Iterable[str] | None) -> list[str]:
    """Static keys from ``FLUXSERVE_API_KEYS`` (comma- or whitespace-separated) or a config list.

    Blank entries are dropped and repeats removed, order kept.
    """
    if value is None:
        return []
    items = _SPLIT_RE.split(value) if isinstance(value, str) else [str(v).strip() for v in value]
    return list(dict.fromkeys(item for item in items if item))


class KeyRing:
    """Authenticates presented keys against the static keys and the key store."""

    def __init__(
        self,
        static_keys: Iterable[str] = (),
        keystore: KeyStore | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._static = _static_entries(static_keys)
        self._keystore = keystore
        self._clock = clock
        self._lock = threading.Lock()
        # None: ask the store. False is a latch: once closed, a ring never reopens.
        self._open: bool | None = False if self._static else (True if keystore is None else None)
        self._open_checked_at = float("-inf")
        self._mode_changed_at: float | None = None  # wall time the running ring saw its first key
        # Key names by key id, for logs: the static keys, anonymous, and each stored key once
        # it authenticated here (or load_names read them all).
        self._names: dict[str, str] = {i.key_id: i.name for _, i in self._static}
        self._names[ANONYMOUS.key_id] = ANONYMOUS.name

    def __repr__(self) -> str:
        return f"KeyRing(static_keys={len(self._static)}, keystore={self._keystore!r})"

    @property
    def open(self) -> bool:
        """True when there are no static keys and the store has never held a key.

        An open ring re-reads the store at most every ``OPEN_RECHECK_S``, so a key created with
        the CLI closes a running server within a second. Once closed, it stays closed.
        """
        return self._is_open(recheck=False)

    def _is_open(self, *, recheck: bool) -> bool:
        """``open``; ``recheck`` re-reads the store now instead of trusting the last look."""
        if self._open is False:
            return False
        if self._keystore is None:
            return True
        now = self._clock()
        with self._lock:
            if recheck or self._open is None or now - self._open_checked_at >= OPEN_RECHECK_S:
                was_open = self._open
                self._open = not self._keystore.has_keys()
                self._open_checked_at = now
                if was_open and not self._open:
                    self._mode_changed_at = time.time()
                    log.warning(
                        "a stored API key now exists: this server, open until now, requires an API key "
                        "from now on (requests without one get 401). Predictions made in open mode belong "
                        "to no key; hand them to one with `fluxserve keys adopt-open NAME`."
                    )
            return self._open

    @property
    def known_closed(self) -> bool:
        """True once the ring is known to need keys; never reads the store (safe on the event loop)."""
        return self._open is False

    @property
    def mode_changed_at(self) -> float | None:
        """Unix time this ring went from open to keys while running; None if it never did."""
        return self._mode_changed_at

    def static_identity(self, key: str | None) -> Identity | None:
        """The identity of a static (config/env) key, without touching the store: cheap enough
        to call on the event loop. None means "not a static key", not "refused"."""
        if not self._static or not key or len(key) > MAX_KEY_LEN:
            return None
        presented = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        match: Identity | None = None
        for digest, identity in self._static:  # every digest compared, no early exit
            if hmac.compare_digest(presented, digest) and match is None:
                match = identity
        return match

    def authenticate(self, key: str | None) -> Identity | None:
        """The caller's identity, or None for a missing, wrong or revoked key.

        In open mode every request is ``ANONYMOUS``. Stored keys are read from the store on every
        call (no cache), so a revocation takes effect on the next request. Blocking (SQLite):
        call it from a thread pool in async code.
        """
        # A key sent to an open ring re-reads the store at once: a key created a moment ago must
        # not see (as anonymous) what open mode made before the periodic re-read closes the ring.
        if self._is_open(recheck=bool(key)):
            return ANONYMOUS
        if not key or len(key) > MAX_KEY_LEN:
            return None
        match = self.static_identity(key)
        if match is not None:
            return match
        if self._keystore is None:
            return None
        presented = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        # An index lookup on the hash: its timing says nothing about the key.
        info = self._keystore.lookup(presented.hex())
        if info is None:
            return None
        self._keystore.touch(info.key_id)
        self._names[info.key_id] = info.name
        return Identity(info.key_id, info.name)

    def name_of(self, key_id: str) -> str | None:
        """The name of the key with this id, for logs, when known without reading the store
        (None otherwise: ``load_names`` reads them). Never blocks."""
        return self._names.get(key_id)

    def stored_keys(self) -> int:
        """How many stored keys are active (revoked ones left out). Blocking: one store read."""
        if self._keystore is None:
            return 0
        return sum(1 for info in self._keystore.list() if not info.revoked)

    def load_names(self) -> None:
        """Learn the names of every stored key (revoked ones too). Blocking: one store read."""
        if self._keystore is not None:
            for info in self._keystore.list():
                self._names[info.key_id] = info.name
