"""Adapter downloads through the egress client: the Downloader that pipelines/loras/resolve.py is given.

pipelines/ never imports server/, so the worker builds AdapterFiles with this downloader. URL and
CivitAI downloads go out under the image egress policy (``input_images.allow_private_addresses``,
``allowed_hosts``) with the ``loras`` download cap and timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import BinaryIO

from pipelines.loras.resolve import AdapterFiles, AdapterFilesConfig, Downloader, DownloadFailed
from server.egress.fetch import AddressPolicy, FetchError, FetchStatusError, download_to


def egress_downloader(config: AdapterFilesConfig) -> Downloader:
    """A Downloader that streams through the SSRF-safe egress client under ``config``'s policy."""
    policy = AddressPolicy(
        allow_private=config.allow_private_addresses,
        allowed_hosts=list(config.allowed_hosts),
        timeout_s=config.download_timeout_s,
        max_bytes=config.max_download_bytes,
    )

    def download(
        url: str,
        sink: BinaryIO,
        *,
        max_bytes: int,
        what: str,
        headers: Mapping[str, str] | None = None,
        https_only: bool = False,
    ) -> None:
        try:
            download_to(
                url, policy, sink, max_bytes=max_bytes, what=what, headers=headers, https_only=https_only
            )
        except FetchStatusError as exc:
            raise DownloadFailed(str(exc), exc.status) from None
        except FetchError as exc:
            raise DownloadFailed(str(exc)) from None

    return download


def adapter_files(config: AdapterFilesConfig) -> AdapterFiles:
    """What the worker process resolves adapter sources with."""
    return AdapterFiles(config, egress_downloader(config))
