"""A throwaway S3-compatible server for tests: moto's server in a child process on a free loopback
port. It accepts any credentials and keeps everything in memory.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.services.base import Service, ServiceUnavailable, free_port, stop_process, wait_until

INSTALL_HINT = 'install it: pip install "moto[server]" (scripts/setup.sh --dev does)'
REGION = "us-east-1"
# moto takes any key; these only have to be present so boto3 signs its requests.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


class S3Server(Service):
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fluxserve-test-s3-"))
        self._process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        for module in ("moto.server", "flask", "boto3"):
            if importlib.util.find_spec(module.split(".")[0]) is None:
                raise ServiceUnavailable(f"{module} is not installed: {INSTALL_HINT}")
        log = self.dir / "moto.log"
        with open(log, "wb") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(
                lambda: _answers(f"{self.endpoint_url}/moto-api/"), "moto_server", 60, self._process, log
            )
        except ServiceUnavailable:
            self.stop()
            raise
        return self

    def client(self) -> Any:
        """A boto3 S3 client for this server, to look at buckets from outside the code under test."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def new_bucket(self) -> str:
        """A fresh, empty bucket; its name."""
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def make_public(self, bucket: str) -> None:
        """Let anyone read the bucket's objects (a bucket policy, as a public bucket has)."""
        statement = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                     "Resource": f"arn:aws:s3:::{bucket}/*"}  # fmt: skip
        policy = {"Version": "2012-10-17", "Statement": [statement]}
        self.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def stop(self) -> None:
        stop_process(self._process)
        self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
