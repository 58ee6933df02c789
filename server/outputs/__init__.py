"""Where output images live: a local folder served by the API.

Convenience re-exports; code inside server/ imports from the defining module.
"""

from server.outputs.local import (
    CONTENT_TYPES,
    ID_PATTERN,
    NAME_PATTERN,
    LocalOutputStorage,
    OutputStorageError,
    content_type_for,
    output_name,
)

__all__ = [
    "CONTENT_TYPES",
    "ID_PATTERN",
    "NAME_PATTERN",
    "LocalOutputStorage",
    "OutputStorageError",
    "content_type_for",
    "output_name",
]
