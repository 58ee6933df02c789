"""The `outputs` settings and the storage they open: the local folder by default, an S3 bucket
with `backend: s3`, and a one-line error naming the field when the S3 settings cannot work."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from server.config import ConfigError, load_settings
from server.outputs import LocalOutputStorage, open_output_storage
from server.outputs.s3 import S3OutputStorage
from tests.services import s3 as moto


def test_the_local_folder_is_the_default(tmp_path):
    storage = open_output_storage(load_settings(data_dir=str(tmp_path)))
    assert isinstance(storage, LocalOutputStorage)
    assert storage.root == tmp_path / "outputs"


def test_s3_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLUXSERVE_OUTPUTS__BACKEND", "s3")
    monkeypatch.setenv("FLUXSERVE_OUTPUTS__S3__BUCKET", "flux-out")
    monkeypatch.setenv("FLUXSERVE_OUTPUTS__S3__PREFIX", "prod")
    monkeypatch.setenv("FLUXSERVE_OUTPUTS__S3__URL_EXPIRY_S", "600")
    s3 = load_settings().outputs.s3
    assert (s3.bucket, s3.prefix, s3.url_expiry_s) == ("flux-out", "prod", 600)


def _error(**outputs) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(outputs=outputs)
    return str(caught.value)


def test_the_s3_backend_without_a_bucket_is_refused():
    assert "outputs.s3.bucket is required with outputs.backend: s3" in _error(backend="s3")


@pytest.mark.parametrize("field", ["endpoint_url", "public_base_url"])
@pytest.mark.parametrize("value", ["minio:9000", "ftp://host/x", "http://"])
def test_a_url_that_is_not_http_is_refused_naming_the_field(field, value):
    message = _error(backend="s3", s3={"bucket": "b-1", field: value})
    assert f"outputs.s3.{field}:" in message and "http:// or https://" in message


def test_a_url_in_place_of_the_bucket_is_refused():
    assert "outputs.s3.bucket:" in _error(backend="s3", s3={"bucket": "https://s3.example.com/b"})


def test_an_access_key_without_its_secret_is_refused():
    assert "give both or neither" in _error(backend="s3", s3={"bucket": "b-1", "access_key_id": "AKIA1"})


@pytest.mark.parametrize("expiry", [0, 7 * 24 * 3600 + 1])
def test_a_presigned_url_lifetime_beyond_what_s3_signs_is_refused(expiry):
    assert "outputs.s3.url_expiry_s" in _error(backend="s3", s3={"bucket": "b-1", "url_expiry_s": expiry})


def test_the_s3_backend_opens_the_configured_bucket_with_the_environments_credentials(
    s3_server, s3_bucket, monkeypatch
):
    # No key in the settings: boto3's chain finds the AWS_* variables.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", moto.REGION)
    settings = load_settings(
        outputs={"backend": "s3", "s3": {"bucket": s3_bucket, "endpoint_url": s3_server.endpoint_url}}
    )
    storage = open_output_storage(settings)
    assert isinstance(storage, S3OutputStorage)
    storage.check()
    pid = str(uuid.uuid4())
    storage.save_all(pid, [("out-0.jpg", b"jpeg bytes")])
    url = storage.url_for(pid, "out-0.jpg", settings.base_url)
    assert parse_qs(urlsplit(url).query)["X-Amz-Credential"][0].startswith("from-the-environment/")
    answer = httpx.get(url)
    assert (answer.content, answer.headers["content-type"]) == (b"jpeg bytes", "image/jpeg")


def test_with_require_owner_key_s3_answers_link_to_the_api_which_checks_the_key(s3_server, s3_bucket):
    settings = load_settings(
        outputs={
            "backend": "s3",
            "require_owner_key": True,
            "s3": {
                "bucket": s3_bucket,
                "endpoint_url": s3_server.endpoint_url,
                "access_key_id": moto.ACCESS_KEY_ID,
                "secret_access_key": moto.SECRET_ACCESS_KEY,
            },
        }
    )
    storage = open_output_storage(settings)
    pid = str(uuid.uuid4())
    assert storage.url_for(pid, "out-0.png", settings.base_url).startswith(f"{settings.base_url}/v1/outputs/")
