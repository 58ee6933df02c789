"""The output storage interface: where a prediction's image files go and how clients reach them.

The local folder served by the API is the default (``local.py``); an object store can stand behind
the same interface. Names are made by the server (``out-0.webp``...), and a prediction's files are
written all or nothing.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path


class OutputStorageError(RuntimeError):
    """Writing outputs failed (disk full, read-only folder...); nothing partial is kept."""


@dataclass(frozen=True)
class StoredOutput:
    """One stored file, for the API to serve: a local path to stream, or a URL to redirect to."""

    content_type: str
    path: Path | None = None
    url: str | None = None


class OutputStorage(abc.ABC):
    @abc.abstractmethod
    def save_all(self, prediction_id: str, files: list[tuple[str, bytes]]) -> list[str]:
        """Store every file of a prediction, all or nothing; the names stored, in order. Raises
        OutputStorageError (leaving nothing behind) when the files cannot be stored."""

    @abc.abstractmethod
    def url_for(self, prediction_id: str, name: str, base_url: str) -> str:
        """The URL a client fetches the file from; ``base_url`` is the API's public base."""

    @abc.abstractmethod
    def open(self, prediction_id: str, name: str) -> StoredOutput | None:
        """The file for a URL's parts, or None when there is none (or the parts are not ours)."""

    def read(self, prediction_id: str, name: str) -> bytes | None:
        """A stored file's bytes (answers that carry the image itself), or None when there is none.
        This default reads a local path; a storage whose files are elsewhere overrides it."""
        stored = self.open(prediction_id, name)
        if stored is None or stored.path is None:
            return None
        try:
            return stored.path.read_bytes()
        except FileNotFoundError:
            return None

    @abc.abstractmethod
    def delete(self, prediction_id: str) -> None:
        """Remove a prediction's files (retention); nothing to remove is not an error."""

    @abc.abstractmethod
    def stored_ids(self) -> list[str]:
        """The ids of the predictions that have files here (checked against the store at start)."""

    def check(self) -> None:
        """At start: raise OutputStorageError, in one line, when the storage cannot be used
        (a bucket that does not exist, credentials refused). Nothing to check by default."""
        return None
