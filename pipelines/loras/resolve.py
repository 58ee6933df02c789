"""From an AdapterSource to a local, checked ``.safetensors`` file: the one entry point of the worker.

- ``local``: a file in the operator's adapter folder (used in place);
- ``url``: downloaded through the injected Downloader (the server's SSRF-safe egress client) into
  the AdapterCache;
- ``huggingface``: Hugging Face's own cache, the Hub only where ``hub_downloads`` allows it (files
  stay in Hugging Face's cache);
- ``civitai``: ``<civitai_base_url>/api/download/models/<version>`` through the Downloader into the
  AdapterCache (a model page first asks the API for its newest version).

Every failure is an AdapterFetchError whose message says which adapter and what went wrong. No
torch here; huggingface_hub is imported only when a Hugging Face source is asked for.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from pipelines.images import format_bytes
from pipelines.loras.cache import AdapterCache, Fetch, not_safetensors_message
from pipelines.loras.errors import AdapterFetchError
from pipelines.loras.sources import AdapterSource
from pipelines.safetensors_check import SafetensorsError, check_safetensors_header

__all__ = [
    "AdapterFetchError",
    "AdapterFiles",
    "AdapterFilesConfig",
    "DownloadFailed",
    "Downloader",
]

log = logging.getLogger(__name__)

CIVITAI_API_MAX_BYTES = 16 * 2**20  # a model's JSON description (its versions, files, images)
_LISTED_NAMES = 10  # names shown when an adapter is not found


@dataclass(frozen=True)
class AdapterFilesConfig:
    """Plain, picklable settings of AdapterFiles (built from the server's ``loras:`` settings)."""

    adapter_dir: str
    cache_dir: str
    cache_max_bytes: int = 20 * 2**30
    max_download_bytes: int = 2048 * 2**20
    download_timeout_s: float = 600
    allow_http: bool = False
    hub_downloads: bool = False
    civitai_base_url: str = "https://civitai.com"
    civitai_token: str | None = field(default=None, repr=False)
    hf_cache_dir: str | None = None  # None: Hugging Face's own (HF_HUB_CACHE, HF_HOME)
    # The egress policy of downloads (the server's input_images policy); read by the Downloader.
    allow_private_addresses: bool = False
    allowed_hosts: tuple[str, ...] = ()


class DownloadFailed(AdapterFetchError):
    """A download failed; ``status`` is the HTTP status when the server answered with an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Downloader(Protocol):
    """Streams ``url`` into ``sink``: at most ``max_bytes``, redirects followed (each hop vetted),
    ``headers`` sent to the first URL's origin only, plain http refused when ``https_only``.
    Raises DownloadFailed with a message naming ``what`` (e.g. "LoRA URL returned HTTP 404")."""

    def __call__(
        self,
        url: str,
        sink: BinaryIO,
        *,
        max_bytes: int,
        what: str,
        headers: Mapping[str, str] | None = None,
        https_only: bool = False,
    ) -> None: ...


class AdapterFiles:
    """Resolves adapter sources to files. ``downloader`` may be None where no source needs one
    (then URL and CivitAI sources fail with a clear message)."""

    def __init__(self, config: AdapterFilesConfig, downloader: Downloader | None) -> None:
        self.config = config
        self.downloader = downloader
        self._cache: AdapterCache | None = None

    @property
    def cache(self) -> AdapterCache:
        """The download cache, made (and its folder tidied) on first use."""
        if self._cache is None:
            try:
                self._cache = AdapterCache(Path(self.config.cache_dir), self.config.cache_max_bytes)
            except OSError as exc:
                raise AdapterFetchError(
                    f"cannot use the adapter cache {self.config.cache_dir} (loras.cache_dir): {exc}"
                ) from None
        return self._cache

    @contextlib.contextmanager
    def open(self, source: AdapterSource) -> Iterator[Path]:
        """The adapter's file, valid (not evicted) until the block ends. Raises AdapterFetchError."""
        if source.kind == "local":
            yield self._local(source)
        elif source.kind == "huggingface":
            yield self._huggingface(source)
        elif source.kind == "url":
            fetch = self._fetch(
                source, source.url or "", what="LoRA URL", https_only=not self.config.allow_http
            )
            with self.cache.use(source, fetch) as path:
                yield path
        elif source.kind == "civitai":
            version = source.version_id
            if version is None:
                version = self._newest_civitai_version(source)
            # Cached by version: a model page names whichever version is newest at the time.
            pinned = AdapterSource("civitai", source.text, model_id=source.model_id, version_id=version)
            url = f"{self._civitai_base}/api/download/models/{version}"
            fetch = self._fetch(
                pinned, url, what="CivitAI download", headers=self._civitai_headers, https_only=self._https
            )
            with self.cache.use(pinned, fetch) as path:
                yield path
        else:  # pragma: no cover - the parser makes no other kind
            raise AdapterFetchError(f"LoRA {source.display}: unknown source kind {source.kind!r}")

    # -- the adapter folder -----------------------------------------------------------------
    def _local(self, source: AdapterSource) -> Path:
        folder = Path(self.config.adapter_dir).expanduser().resolve()
        name = source.name or ""
        if not folder.is_dir():
            raise AdapterFetchError(
                f"no adapter named {_stem(name)!r}: the adapter folder {folder} (loras.dir) does not exist"
            )
        path = (folder / name).resolve()
        if not path.is_relative_to(folder):
            raise AdapterFetchError(f"adapter {_stem(name)!r} points outside the adapter folder")
        if not path.is_file():
            available = sorted(_stem(p.name) for p in folder.glob("*.safetensors") if p.is_file())
            raise AdapterFetchError(
                f"no adapter named {_stem(name)!r} in the adapter folder; {_few(available)}"
            )
        self._check(path, source.display)
        return path

    # -- Hugging Face ---------------------------------------------------------------------------
    def _huggingface(self, source: AdapterSource) -> Path:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        repo = source.repo or ""
        filename = source.filename or self._only_safetensors(source)
        where = f"huggingface.co/{repo}/{filename}"
        common = {"revision": source.revision, "cache_dir": self.config.hf_cache_dir}
        try:
            path = Path(hf_hub_download(repo, filename, local_files_only=True, **common))
        except (LocalEntryNotFoundError, EntryNotFoundError, OSError, ValueError):
            self._check_hub_allowed(where, constants.HF_HUB_OFFLINE)
            self._check_hub_size(source, filename, where)
            try:
                path = Path(hf_hub_download(repo, filename, **common))
            except RepositoryNotFoundError:
                raise AdapterFetchError(
                    f"no Hugging Face repository {repo} (or it is private or gated)"
                ) from None
            except RevisionNotFoundError:
                raise AdapterFetchError(f"no revision {source.revision!r} in huggingface.co/{repo}") from None
            except EntryNotFoundError:
                raise AdapterFetchError(f"no file {filename} in huggingface.co/{repo}") from None
            except (HfHubHTTPError, OSError, ValueError) as exc:
                raise AdapterFetchError(f"could not download LoRA {where} from the Hub: {exc}") from None
            log.info("Downloaded LoRA %s from the Hugging Face Hub", where)
        self._check(path, where)
        return path

    def _check_hub_allowed(self, where: str, offline: bool) -> None:
        if not self.config.hub_downloads:
            raise AdapterFetchError(
                f"LoRA {where} is not in this server's Hugging Face cache, and downloads from the Hub "
                "are off (loras.hub_downloads)"
            )
        if offline:
            raise AdapterFetchError(
                f"LoRA {where} is not in this server's Hugging Face cache, and HF_HUB_OFFLINE is set "
                "in the worker's environment (loras.hub_downloads is on, but the Hub cannot be reached)"
            )

    def _check_hub_size(self, source: AdapterSource, filename: str, where: str) -> None:
        """Refuse a file over the download cap before fetching it (the Hub says its size)."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        try:
            infos = HfApi().get_paths_info(source.repo or "", [filename], revision=source.revision)
        except (HfHubHTTPError, OSError, ValueError):
            return  # the download itself says what is wrong
        size = max((getattr(info, "size", 0) or 0 for info in infos), default=0)
        if size > self.config.max_download_bytes:
            raise AdapterFetchError(
                f"LoRA {where} is larger than {format_bytes(self.config.max_download_bytes)} "
                "(loras.max_download_mb)"
            )

    def _only_safetensors(self, source: AdapterSource) -> str:
        """The repository's one .safetensors file: from the local snapshot, else (where allowed)
        from the Hub's file list."""
        from huggingface_hub import HfApi, constants, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

        repo = source.repo or ""
        where = f"huggingface.co/{repo}"
        names: list[str] = []
        cached = False
        try:
            folder = Path(
                snapshot_download(
                    repo,
                    revision=source.revision,
                    cache_dir=self.config.hf_cache_dir,
                    local_files_only=True,
                )
            )
            names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))
            cached = True
        except (OSError, ValueError):
            pass  # not in the local cache
        if not names and cached and not self.config.hub_downloads:
            raise AdapterFetchError(
                f"{where} holds no .safetensors file in this server's Hugging Face cache "
                "(downloads from the Hub are off: loras.hub_downloads)"
            )
        if not names:  # not in the local cache (or no .safetensors there): ask the Hub, where allowed
            self._check_hub_allowed(where, constants.HF_HUB_OFFLINE)
            try:
                files = HfApi().list_repo_files(repo, revision=source.revision)
            except RepositoryNotFoundError:
                raise AdapterFetchError(
                    f"no Hugging Face repository {repo} (or it is private or gated)"
                ) from None
            except RevisionNotFoundError:
                raise AdapterFetchError(f"no revision {source.revision!r} in {where}") from None
            except (HfHubHTTPError, OSError, ValueError) as exc:
                raise AdapterFetchError(f"could not list the files of {where}: {exc}") from None
            names = sorted(f for f in files if f.lower().endswith(".safetensors"))
        if not names:
            raise AdapterFetchError(f"{where} holds no .safetensors file")
        if len(names) > 1:
            raise AdapterFetchError(
                f"{where} holds several .safetensors files, name one "
                f"(e.g. {where}/{names[0]}); {_few(names, what='files')}"
            )
        return names[0]

    # -- downloads (URL, CivitAI) -----------------------------------------------------------------
    def _fetch(
        self,
        source: AdapterSource,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str] | None = None,
        https_only: bool,
    ) -> Fetch:
        downloader = self._downloader()

        def fetch(sink: BinaryIO) -> None:
            try:
                downloader(
                    url,
                    sink,
                    max_bytes=self.config.max_download_bytes,
                    what=what,
                    headers=headers,
                    https_only=https_only,
                )
            except DownloadFailed as exc:
                raise DownloadFailed(
                    f"could not download LoRA {source.display}: {exc}{self._hint(exc)}", exc.status
                ) from None

        return fetch

    def _hint(self, exc: DownloadFailed) -> str:
        if exc.status in (401, 403) and self._civitai_headers is None and "CivitAI" in str(exc):
            return " (a CivitAI API token may be needed: loras.civitai_token)"
        if "larger than" in str(exc):
            return " (loras.max_download_mb)"
        return ""

    def _downloader(self) -> Downloader:
        if self.downloader is None:
            raise AdapterFetchError("this worker cannot download adapters (no downloader configured)")
        return self.downloader

    def _newest_civitai_version(self, source: AdapterSource) -> int:
        url = f"{self._civitai_base}/api/v1/models/{source.model_id}"
        sink = io.BytesIO()
        try:
            self._downloader()(
                url,
                sink,
                max_bytes=CIVITAI_API_MAX_BYTES,
                what="CivitAI model API",
                headers=self._civitai_headers,
                https_only=self._https,
            )
        except DownloadFailed as exc:
            detail = " (no such model)" if exc.status == 404 else self._hint(exc)
            raise DownloadFailed(
                f"could not look up {source.display} on CivitAI: {exc}{detail}", exc.status
            ) from None
        try:
            versions = json.loads(sink.getvalue())["modelVersions"]
            newest = versions[0]["id"] if versions else None
        except (ValueError, KeyError, TypeError, IndexError):
            raise AdapterFetchError(
                f"CivitAI's answer about {source.display} is not a model description"
            ) from None
        if not isinstance(newest, int) or isinstance(newest, bool):
            raise AdapterFetchError(f"{source.display} on CivitAI has no downloadable version")
        return newest

    @property
    def _civitai_base(self) -> str:
        return self.config.civitai_base_url.rstrip("/")

    @property
    def _https(self) -> bool:
        return self._civitai_base.lower().startswith("https://")

    @property
    def _civitai_headers(self) -> dict[str, str] | None:
        token = self.config.civitai_token
        return {"Authorization": f"Bearer {token}"} if token else None

    @staticmethod
    def _check(path: Path, display: str) -> None:
        try:
            check_safetensors_header(path)
        except SafetensorsError as exc:
            raise AdapterFetchError(not_safetensors_message(display, exc)) from None


def _stem(name: str) -> str:
    return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name


def _few(names: list[str], what: str = "available") -> str:
    if not names:
        return "the folder holds no .safetensors adapters" if what == "available" else "none"
    shown = ", ".join(names[:_LISTED_NAMES])
    more = f" and {len(names) - _LISTED_NAMES} more" if len(names) > _LISTED_NAMES else ""
    return f"{what}: {shown}{more}"
