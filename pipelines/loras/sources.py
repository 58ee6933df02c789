"""Where a LoRA adapter comes from: the forms a client may write in ``lora_weights`` / ``extra_lora``.

Torch-free, so the API can refuse a bad source at create. Parsing decides only the form; whether
the file exists, downloads, and is a Flux LoRA is found out by the worker (``cache.py``,
``adapters.py``), and a failure there ends that prediction in ``error``.

The accepted forms (ACCEPTED_FORMS says the same to a client):

- a name from the operator's adapter folder: ``my-style`` or ``my-style.safetensors``;
- an ``https://`` URL of a ``.safetensors`` file, signed URLs included (``http://`` only where the
  operator allows it);
- Hugging Face: ``huggingface.co/<owner>/<repo>[/<file>.safetensors]`` (with or without
  ``https://``, ``/resolve/<rev>/`` and ``/blob/<rev>/`` links too) or ``<owner>/<repo>``;
- CivitAI: a model page ``https://civitai.com/models/<id>[/<slug>][?modelVersionId=<v>]`` or a
  download link ``https://civitai.com/api/download/models/<v>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SourceKind = Literal["local", "url", "huggingface", "civitai"]

ACCEPTED_FORMS = (
    "an adapter name from the server's adapter folder (e.g. 'my-style'), "
    "an https:// URL of a .safetensors file, "
    "huggingface.co/<owner>/<repo>[/<file>.safetensors] or <owner>/<repo>, "
    "or a CivitAI model or download URL (civitai.com/models/<id> or civitai.com/api/download/models/<id>)"
)
MAX_SOURCE_CHARS = 2048
HF_HOSTS = {"huggingface.co", "www.huggingface.co", "hf.co"}
CIVITAI_HOSTS = {"civitai.com", "www.civitai.com"}

# Query parameters that sign a URL rather than name a file: left out of the cache key, so the
# same file behind a fresh signature is not downloaded again, and never written to logs.
_SIGNATURE_PARAMS = re.compile(
    r"(?i)^(x-amz-.*|x-goog-.*|signature|expires|key-pair-id|policy|sig|se|st|sp|sv|sr|spr|skoid|"
    r"sktid|skt|ske|sks|skv|token|access_token|response-.*)$"
)
_LOCAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_BARE_REPO = re.compile(rf"({_REPO_PART})/({_REPO_PART})")


class AdapterSourceError(ValueError):
    """A ``lora_weights``/``extra_lora`` value in none of the accepted forms (the message says why)."""


@dataclass(frozen=True)
class AdapterSource:
    """One adapter's origin, parsed. ``key`` names it in the download cache and among the loaded
    adapters; ``display`` is safe to show in logs (no signature or token)."""

    kind: SourceKind
    text: str  # as the client wrote it
    url: str | None = None  # kind url
    name: str | None = None  # kind local: the file name in the adapter folder
    repo: str | None = None  # kind huggingface: owner/repo
    filename: str | None = None  # kind huggingface: the file in the repo (None: its only .safetensors)
    revision: str | None = None  # kind huggingface
    model_id: int | None = None  # kind civitai
    version_id: int | None = None  # kind civitai (None: the model's newest version)

    @property
    def key(self) -> str:
        if self.kind == "url":
            return unsigned_url(self.url or "")
        if self.kind == "local":
            return f"local:{self.name}"
        if self.kind == "huggingface":
            return f"hf:{self.repo}@{self.revision or 'main'}/{self.filename or ''}"
        if self.version_id is not None:
            return f"civitai:version:{self.version_id}"
        return f"civitai:model:{self.model_id}"

    @property
    def display(self) -> str:
        if self.kind == "url":
            return redact_url(self.url or "")
        if self.kind == "local":
            return f"adapter folder: {self.name}"
        if self.kind == "huggingface":
            file = f"/{self.filename}" if self.filename else ""
            rev = f"@{self.revision}" if self.revision else ""
            return f"huggingface.co/{self.repo}{rev}{file}"
        if self.version_id is not None:
            return f"civitai model version {self.version_id}"
        return f"civitai model {self.model_id}"


def parse_adapter_source(text: object, *, allow_http: bool = False) -> AdapterSource:
    """The source a client wrote, or AdapterSourceError naming the accepted forms."""
    if not isinstance(text, str):
        raise AdapterSourceError(f"must be a string: {ACCEPTED_FORMS}")
    value = text.strip()
    if not value:
        raise AdapterSourceError(f"must not be empty: {ACCEPTED_FORMS}")
    if len(value) > MAX_SOURCE_CHARS:
        raise AdapterSourceError(f"is longer than {MAX_SOURCE_CHARS} characters")
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise AdapterSourceError(f"must not contain spaces or control characters: {ACCEPTED_FORMS}")

    lowered = value.lower()
    if lowered.startswith(("huggingface.co/", "hf.co/", "www.huggingface.co/")):
        value, lowered = "https://" + value, "https://" + lowered
    elif lowered.startswith(("civitai.com/", "www.civitai.com/")):
        value, lowered = "https://" + value, "https://" + lowered

    if "://" in value:
        return _parse_url(value, allow_http=allow_http)
    match = _BARE_REPO.fullmatch(value)
    if match:
        return AdapterSource("huggingface", text, repo=value)
    if _LOCAL_NAME.fullmatch(value) and ".." not in value:
        name = value if value.lower().endswith(".safetensors") else f"{value}.safetensors"
        return AdapterSource("local", text, name=name)
    raise AdapterSourceError(f"is not a recognised adapter source: {ACCEPTED_FORMS}")


def _parse_url(value: str, *, allow_http: bool) -> AdapterSource:
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise AdapterSourceError(f"must be an https:// URL: {ACCEPTED_FORMS}")
    if parts.username or parts.password:
        raise AdapterSourceError("must not carry a user name or password in the URL")
    host = parts.hostname.lower()
    if host in HF_HOSTS:
        return _parse_huggingface(value, parts.path)
    if host in CIVITAI_HOSTS:
        return _parse_civitai(value, parts.path, parts.query)
    if scheme == "http" and not allow_http:
        raise AdapterSourceError("must be an https:// URL (this server does not fetch adapters over http)")
    if not parts.path.lower().endswith(".safetensors"):
        raise AdapterSourceError(
            "a URL must point at a .safetensors file (other formats can run code when loaded): "
            f"{ACCEPTED_FORMS}"
        )
    return AdapterSource("url", value, url=value)


def _parse_huggingface(text: str, path: str) -> AdapterSource:
    segments = [s for s in path.split("/") if s]
    if len(segments) < 2 or not _BARE_REPO.fullmatch("/".join(segments[:2])):
        raise AdapterSourceError("a Hugging Face source needs huggingface.co/<owner>/<repo>")
    repo = "/".join(segments[:2])
    rest = segments[2:]
    revision = None
    if len(rest) >= 2 and rest[0] in ("resolve", "blob", "tree"):
        revision, rest = rest[1], rest[2:]
    filename = "/".join(rest) or None
    if filename is not None and not filename.lower().endswith(".safetensors"):
        raise AdapterSourceError(
            f"the file in huggingface.co/{repo} must be a .safetensors file, not {filename!r}"
        )
    if filename is not None and any(part in ("", ".", "..") for part in filename.split("/")):
        raise AdapterSourceError(f"{filename!r} is not a file path inside the repository")
    return AdapterSource("huggingface", text, repo=repo, filename=filename, revision=revision)


def _parse_civitai(text: str, path: str, query: str) -> AdapterSource:
    params = dict(parse_qsl(query))
    download = re.fullmatch(r"/api/download/models/(\d+)/?", path)
    if download:
        return AdapterSource("civitai", text, version_id=int(download.group(1)))
    page = re.fullmatch(r"/models/(\d+)(/[^/]*)?/?", path)
    if page:
        version = params.get("modelVersionId")
        if version is not None and not version.isdigit():
            raise AdapterSourceError("modelVersionId in a CivitAI URL must be a number")
        return AdapterSource(
            "civitai", text, model_id=int(page.group(1)), version_id=int(version) if version else None
        )
    raise AdapterSourceError(
        "a CivitAI source must be civitai.com/models/<id> or civitai.com/api/download/models/<id>"
    )


def unsigned_url(url: str) -> str:
    """The URL without the query parameters that only sign it (the cache key of a URL)."""
    parts = urlsplit(url)
    kept = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _SIGNATURE_PARAMS.match(k)
    ]
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, urlencode(kept), ""))


def redact_url(url: str) -> str:
    """The URL as logs may show it: signature and token parameters replaced by ``REDACTED``."""
    parts = urlsplit(url)
    query = [
        (k, "REDACTED" if _SIGNATURE_PARAMS.match(k) else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
