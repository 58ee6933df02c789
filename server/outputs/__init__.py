"""Where output images live: a local folder served by the API (the default), or an S3-compatible
bucket every host shares (``outputs.backend: s3``, in ``s3.py``).

``open_output_storage(settings)`` picks one from the settings. The other names are convenience
re-exports; code inside server/ imports from the defining module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.outputs.base import OutputStorage, StoredOutput
from server.outputs.local import (
    CONTENT_TYPES,
    ID_PATTERN,
    NAME_PATTERN,
    LocalOutputStorage,
    OutputStorageError,
    content_type_for,
    output_name,
)

if TYPE_CHECKING:
    from server.config import Settings


def open_output_storage(settings: Settings) -> OutputStorage:
    """The storage ``settings.outputs`` describes. Nothing is contacted here; call ``check()``
    at start to fail early on a bucket that cannot be used."""
    if settings.outputs.backend == "s3":
        from server.outputs.s3 import S3OutputStorage  # boto3: only when configured

        # With require_owner_key, answers link to the API, which checks the key and redirects:
        # a direct bucket URL would serve anyone who holds it.
        return S3OutputStorage.from_settings(
            settings.outputs.s3, link_via_api=settings.outputs.require_owner_key
        )
    return LocalOutputStorage(settings.outputs_path)


__all__ = [
    "CONTENT_TYPES",
    "ID_PATTERN",
    "NAME_PATTERN",
    "LocalOutputStorage",
    "OutputStorage",
    "OutputStorageError",
    "StoredOutput",
    "content_type_for",
    "open_output_storage",
    "output_name",
]
