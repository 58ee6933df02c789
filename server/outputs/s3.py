"""Output storage in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, Ceph...): every API
replica and worker host reads and writes the same files, and clients download them from the
bucket, not through the API.

Objects live at ``<prefix><prediction id>/<name>``, uploaded with their Content-Type. Clients get
either a presigned GET URL (private bucket; minted anew on every read of the prediction, valid for
``url_expiry_s``) or ``<public_base_url>/<key>`` (a public bucket or a CDN in front of it). With
``link_via_api`` the answers carry the API's own /v1/outputs/ URL instead and the API redirects to
the bucket, so the API's checks (``outputs.require_owner_key``) run before every download.

boto3 is imported here only: install the ``s3`` extra (``pip install "fluxserve[s3]"``).
Credentials come from boto3's usual chain (AWS_* environment variables, ~/.aws, an instance or
pod role) unless an access key is given.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from server.outputs.base import OutputStorage, OutputStorageError, StoredOutput
from server.outputs.local import ID_PATTERN, NAME_PATTERN, content_type_for

if TYPE_CHECKING:
    from server.config import S3OutputSettings

log = logging.getLogger("server.outputs.s3")

# Retries with backoff (boto3's "standard" mode: throttling and 5xx answers, dropped connections),
# and timeouts, so a hung endpoint turns into an error instead of a job that never ends.
CLIENT_CONFIG = {
    "retries": {"max_attempts": 4, "mode": "standard"},
    "connect_timeout": 5,
    "read_timeout": 30,
}
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise OutputStorageError('outputs.backend s3 needs boto3: pip install "fluxserve[s3]"') from None
    return boto3


def make_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    addressing_style: str = "auto",
) -> Any:
    """A boto3 S3 client. Without an access key, boto3's credential chain supplies one."""
    boto3 = _boto3()
    from botocore.config import Config

    config = Config(**CLIENT_CONFIG, s3={"addressing_style": addressing_style}, signature_version="s3v4")
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


def _storage_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3OutputStorage(OutputStorage):
    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        prefix: str = "",
        public_base_url: str | None = None,
        url_expiry_s: int = 3600,
        link_via_api: bool = False,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.url_expiry_s = url_expiry_s
        self.link_via_api = link_via_api

    @classmethod
    def from_settings(cls, s3: S3OutputSettings, *, link_via_api: bool = False) -> S3OutputStorage:
        secret = s3.secret_access_key.get_secret_value() if s3.secret_access_key else None
        client = make_client(
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            access_key_id=s3.access_key_id,
            secret_access_key=secret,
            addressing_style=s3.addressing_style,
        )
        return cls(
            client,
            s3.bucket or "",
            prefix=s3.prefix,
            public_base_url=s3.public_base_url,
            url_expiry_s=s3.url_expiry_s,
            link_via_api=link_via_api,
        )

    def __repr__(self) -> str:
        return f"S3OutputStorage(bucket={self.bucket!r}, prefix={self.prefix!r})"

    # -- keys and URLs ----------------------------------------------------------------------
    def key_for(self, prediction_id: str, name: str) -> str:
        return f"{self.prefix}{prediction_id}/{name}"

    def _folder(self, prediction_id: str) -> str:
        return f"{self.prefix}{prediction_id}/"

    def direct_url(self, prediction_id: str, name: str) -> str:
        """Where the bucket serves the file: under the public base URL, else a presigned GET."""
        key = self.key_for(prediction_id, name)
        if self.public_base_url:
            return f"{self.public_base_url}/{quote(key)}"
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_expiry_s
        )

    def url_for(self, prediction_id: str, name: str, base_url: str) -> str:
        if self.link_via_api:
            return f"{base_url.rstrip('/')}/v1/outputs/{prediction_id}/{name}"
        return self.direct_url(prediction_id, name)

    def open(self, prediction_id: str, name: str) -> StoredOutput | None:
        """A redirect target for the API, or None when there is no such file. When the bucket
        cannot be asked, the redirect is given anyway: the bucket then answers for itself."""
        if not ID_PATTERN.fullmatch(prediction_id) or not NAME_PATTERN.fullmatch(name):
            return None
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key_for(prediction_id, name))
        except _storage_errors() as exc:
            if _error_code(exc) in NOT_FOUND_CODES:
                return None
            log.warning("output storage %r could not look up %s/%s: %s", self, prediction_id, name, exc)
        return StoredOutput(content_type=content_type_for(name), url=self.direct_url(prediction_id, name))

    def read(self, prediction_id: str, name: str) -> bytes | None:
        if not ID_PATTERN.fullmatch(prediction_id) or not NAME_PATTERN.fullmatch(name):
            return None
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key_for(prediction_id, name))
            return answer["Body"].read()
        except _storage_errors() as exc:
            if _error_code(exc) in NOT_FOUND_CODES:
                return None
            raise OutputStorageError(f"could not read {prediction_id}/{name} from {self!r}: {exc}") from None

    # -- writing and deleting ---------------------------------------------------------------
    def save_all(self, prediction_id: str, files: list[tuple[str, bytes]]) -> list[str]:
        """Upload every file; on any failure delete the ones already uploaded and raise
        OutputStorageError. (No reader sees a partial set: a prediction's URLs are given out only
        after the store records it as succeeded, which happens after this returns.)"""
        if not ID_PATTERN.fullmatch(prediction_id):
            raise ValueError("invalid prediction id")
        for name, _ in files:
            if not NAME_PATTERN.fullmatch(name):
                raise ValueError(f"invalid output name {name!r}")
        uploaded: list[str] = []
        try:
            for name, data in files:
                key = self.key_for(prediction_id, name)
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=data, ContentType=content_type_for(name)
                )
                uploaded.append(key)
        except _storage_errors() as exc:
            self._delete_keys(uploaded)
            raise OutputStorageError(f"could not store the images in bucket {self.bucket}: {exc}") from None
        return [name for name, _ in files]

    def _delete_keys(self, keys: list[str]) -> None:
        """Best effort, after a failed upload: what cannot be deleted now is an orphan that the
        start-up check (``stored_ids`` against the store) reports."""
        if not keys:
            return
        try:
            self._delete_objects(keys)
        except (*_storage_errors(), OutputStorageError) as exc:
            log.warning("output storage %r could not remove a partial upload %s: %s", self, keys, exc)

    def _delete_objects(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = keys[start : start + 1000]
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise OutputStorageError(
                    f"could not delete {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )

    def delete(self, prediction_id: str) -> None:
        """Remove a prediction's objects. Raises OutputStorageError when the bucket cannot be
        reached, so retention tries again later instead of marking the files removed."""
        if not ID_PATTERN.fullmatch(prediction_id):
            return
        try:
            keys = [
                obj["Key"]
                for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self._folder(prediction_id)
                )
                for obj in page.get("Contents", [])
            ]
            self._delete_objects(keys)
        except _storage_errors() as exc:
            raise OutputStorageError(f"could not delete the images of {prediction_id}: {exc}") from None

    def stored_ids(self) -> list[str]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
            )
            folders = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
        except _storage_errors() as exc:
            raise OutputStorageError(f"could not list bucket {self.bucket}: {exc}") from None
        ids = (folder[len(self.prefix) :].rstrip("/") for folder in folders)
        return [i for i in ids if ID_PATTERN.fullmatch(i)]

    def check(self) -> None:
        """At start: the bucket exists and these credentials reach it (a one-line error if not)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except _storage_errors() as exc:
            code = _error_code(exc)
            why = {"404": "does not exist", "403": "is not accessible with these credentials"}.get(code, "")
            raise OutputStorageError(
                f"outputs.s3.bucket {self.bucket!r} {why or f'cannot be reached: {exc}'}"
            ) from None
