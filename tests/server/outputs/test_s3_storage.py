"""S3OutputStorage against a real S3-compatible server (moto on loopback): files are uploaded with
their content type, downloaded from the URLs the API hands out, written all or nothing, deleted by
retention and listed at start; a prefix keeps them apart from anything else in the bucket."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.exceptions import EndpointConnectionError

from server.outputs.base import OutputStorageError
from server.outputs.s3 import S3OutputStorage, make_client
from tests.services import s3 as moto

BASE_URL = "https://flux.example.com"
FILES = [("out-0.png", b"\x89PNG first image"), ("out-1.webp", b"RIFF second image")]
CONTENT_TYPES = {"out-0.png": "image/png", "out-1.webp": "image/webp"}


def new_id() -> str:
    return str(uuid.uuid4())


def client_for(s3_server):
    return make_client(
        endpoint_url=s3_server.endpoint_url,
        region=moto.REGION,
        access_key_id=moto.ACCESS_KEY_ID,
        secret_access_key=moto.SECRET_ACCESS_KEY,
    )


@pytest.fixture
def storage(s3_server, s3_bucket) -> S3OutputStorage:
    return S3OutputStorage(client_for(s3_server), s3_bucket, prefix="outputs")


def test_saved_files_download_from_their_url_with_their_bytes_and_content_type(storage):
    pid = new_id()
    assert storage.save_all(pid, FILES) == ["out-0.png", "out-1.webp"]
    for name, data in FILES:
        answer = httpx.get(storage.url_for(pid, name, BASE_URL))
        assert answer.status_code == 200
        assert answer.content == data
        assert answer.headers["content-type"] == CONTENT_TYPES[name]


def test_read_gives_a_stored_files_bytes_and_none_for_a_file_not_there(storage):
    pid = new_id()
    storage.save_all(pid, FILES)

    assert [storage.read(pid, name) for name, _ in FILES] == [data for _, data in FILES]
    assert storage.read(pid, "out-9.png") is None
    assert storage.read(new_id(), "out-0.png") is None


def test_urls_are_presigned_for_url_expiry_s(s3_server, s3_bucket):
    storage = S3OutputStorage(client_for(s3_server), s3_bucket, url_expiry_s=900)
    pid = new_id()
    storage.save_all(pid, FILES[:1])
    query = parse_qs(urlsplit(storage.url_for(pid, "out-0.png", BASE_URL)).query)
    assert query["X-Amz-Expires"] == ["900"]
    assert "X-Amz-Signature" in query


def test_objects_are_stored_under_the_prefix(storage, s3_server, s3_bucket):
    pid = new_id()
    storage.save_all(pid, FILES)
    assert s3_server.keys(s3_bucket) == [f"outputs/{pid}/out-0.png", f"outputs/{pid}/out-1.webp"]


def test_a_failed_upload_half_way_leaves_no_object(storage, s3_server, s3_bucket):
    puts = []

    def second_put_fails(params, **kwargs):
        puts.append(params["url"])
        if len(puts) == 2:
            raise EndpointConnectionError(endpoint_url=params["url"])

    storage.client.meta.events.register("before-call.s3.PutObject", second_put_fails)
    with pytest.raises(OutputStorageError, match="could not store the images"):
        storage.save_all(new_id(), FILES)
    assert len(puts) == 2  # the first file was uploaded, then removed
    assert s3_server.keys(s3_bucket) == []


def test_delete_removes_that_predictions_objects_only(storage, s3_server, s3_bucket):
    gone, kept = new_id(), new_id()
    storage.save_all(gone, FILES)
    storage.save_all(kept, FILES[:1])
    storage.delete(gone)
    assert s3_server.keys(s3_bucket) == [f"outputs/{kept}/out-0.png"]
    assert storage.open(gone, "out-0.png") is None


def test_deleting_what_is_not_there_is_not_an_error(storage):
    storage.delete(new_id())
    storage.delete("not-an-id")


def test_stored_ids_lists_the_predictions_with_files_under_the_prefix(storage, s3_server, s3_bucket):
    ids = sorted([new_id(), new_id()])
    for pid in ids:
        storage.save_all(pid, FILES[:1])
    other = s3_server.client()
    other.put_object(Bucket=s3_bucket, Key=f"elsewhere/{new_id()}/out-0.png", Body=b"x")
    other.put_object(Bucket=s3_bucket, Key="outputs/notes/readme.txt", Body=b"x")
    assert sorted(storage.stored_ids()) == ids


def test_storages_with_different_prefixes_do_not_see_each_other(s3_server, s3_bucket):
    a = S3OutputStorage(client_for(s3_server), s3_bucket, prefix="a/")
    b = S3OutputStorage(client_for(s3_server), s3_bucket, prefix="/b")
    pid = new_id()
    a.save_all(pid, FILES[:1])
    assert a.stored_ids() == [pid]
    assert b.stored_ids() == []
    assert b.open(pid, "out-0.png") is None
    b.delete(pid)
    assert s3_server.keys(s3_bucket) == [f"a/{pid}/out-0.png"]


def test_without_a_prefix_objects_sit_at_the_top_of_the_bucket(s3_server, s3_bucket):
    storage = S3OutputStorage(client_for(s3_server), s3_bucket)
    pid = new_id()
    storage.save_all(pid, FILES[:1])
    assert s3_server.keys(s3_bucket) == [f"{pid}/out-0.png"]
    assert storage.stored_ids() == [pid]


def test_public_base_url_gives_plain_urls_under_it(s3_server, s3_bucket):
    # A public bucket is the operator's doing (a bucket policy); the storage only builds URLs.
    s3_server.make_public(s3_bucket)
    public = f"{s3_server.endpoint_url}/{s3_bucket}/"
    storage = S3OutputStorage(client_for(s3_server), s3_bucket, prefix="o", public_base_url=public)
    pid = new_id()
    storage.save_all(pid, FILES[:1])
    url = storage.url_for(pid, "out-0.png", BASE_URL)
    assert url == f"{s3_server.endpoint_url}/{s3_bucket}/o/{pid}/out-0.png"
    answer = httpx.get(url)
    assert (answer.status_code, answer.content) == (200, FILES[0][1])


def test_open_gives_a_url_to_redirect_to(storage):
    pid = new_id()
    storage.save_all(pid, FILES[:1])
    stored = storage.open(pid, "out-0.png")
    assert stored is not None and stored.path is None
    assert stored.content_type == "image/png"
    assert httpx.get(stored.url).content == FILES[0][1]


@pytest.mark.parametrize(
    "pid, name", [(None, "out-9.png"), ("not-an-id", "out-0.png"), (None, "../out-0.png"), (None, "x.txt")]
)
def test_open_of_a_file_that_is_not_there_or_not_ours_is_none(storage, pid, name):
    existing = new_id()
    storage.save_all(existing, FILES[:1])
    assert storage.open(pid or existing, name) is None


def test_with_link_via_api_answers_link_to_the_api_and_open_still_redirects_to_the_bucket(
    s3_server, s3_bucket
):
    storage = S3OutputStorage(client_for(s3_server), s3_bucket, link_via_api=True)
    pid = new_id()
    storage.save_all(pid, FILES[:1])
    assert storage.url_for(pid, "out-0.png", BASE_URL + "/") == f"{BASE_URL}/v1/outputs/{pid}/out-0.png"
    stored = storage.open(pid, "out-0.png")
    assert stored is not None and stored.url.startswith(s3_server.endpoint_url)


def test_invalid_names_are_refused_before_anything_is_uploaded(storage, s3_server, s3_bucket):
    with pytest.raises(ValueError):
        storage.save_all(new_id(), [FILES[0], ("../escape.png", b"x")])
    with pytest.raises(ValueError):
        storage.save_all("../up", FILES)
    assert s3_server.keys(s3_bucket) == []


def test_check_passes_for_a_reachable_bucket(storage):
    storage.check()


def test_check_names_a_bucket_that_does_not_exist(s3_server):
    storage = S3OutputStorage(client_for(s3_server), "no-such-bucket")
    with pytest.raises(OutputStorageError, match="'no-such-bucket' does not exist"):
        storage.check()
