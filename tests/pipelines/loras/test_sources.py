"""The adapter sources a client may write (pipelines/loras/sources.py): each accepted form, each refusal,
and what the cache key and the log display keep of a signed URL."""

from __future__ import annotations

import pytest

from pipelines.loras.sources import AdapterSourceError, parse_adapter_source

ACCEPTED = {
    "my-style": ("local", {"name": "my-style.safetensors"}),
    "my-style.safetensors": ("local", {"name": "my-style.safetensors"}),
    "https://files.example/x/a.safetensors": ("url", {"url": "https://files.example/x/a.safetensors"}),
    "owner/repo": ("huggingface", {"repo": "owner/repo", "filename": None}),
    "huggingface.co/owner/repo": ("huggingface", {"repo": "owner/repo"}),
    "https://huggingface.co/owner/repo/lora.safetensors": (
        "huggingface",
        {"repo": "owner/repo", "filename": "lora.safetensors"},
    ),
    "https://huggingface.co/owner/repo/resolve/v2/sub/l.safetensors": (
        "huggingface",
        {"repo": "owner/repo", "filename": "sub/l.safetensors", "revision": "v2"},
    ),
    "https://huggingface.co/owner/repo/blob/main/l.safetensors": (
        "huggingface",
        {"filename": "l.safetensors", "revision": "main"},
    ),
    "hf.co/owner/repo": ("huggingface", {"repo": "owner/repo"}),
    "https://civitai.com/models/123": ("civitai", {"model_id": 123, "version_id": None}),
    "civitai.com/models/123/some-slug?modelVersionId=456": ("civitai", {"model_id": 123, "version_id": 456}),
    "https://civitai.com/api/download/models/456": ("civitai", {"version_id": 456}),
}


@pytest.mark.parametrize("text", list(ACCEPTED))
def test_each_accepted_form_parses(text):
    kind, fields = ACCEPTED[text]
    parsed = parse_adapter_source(text)
    assert parsed.kind == kind
    for name, value in fields.items():
        assert getattr(parsed, name) == value


REFUSED = {
    "": "must not be empty",
    "   ": "must not be empty",
    "a b": "must not contain spaces",
    "x" * 3000: "longer than 2048",
    "ftp://files.example/a.safetensors": "must be an https:// URL",
    "http://files.example/a.safetensors": "does not fetch adapters over http",
    "https://user:pw@files.example/a.safetensors": "user name or password",
    "https://files.example/a.ckpt": "must point at a .safetensors file",
    "https://files.example/a.bin": "must point at a .safetensors file",
    "huggingface.co/owner": "needs huggingface.co/<owner>/<repo>",
    "huggingface.co/owner/repo/model.bin": "must be a .safetensors file",
    "https://civitai.com/images/5": "a CivitAI source must be",
    "https://civitai.com/models/1?modelVersionId=abc": "modelVersionId in a CivitAI URL must be a number",
    "../etc/passwd": "is not a recognised adapter source",
    "a/b/c": "is not a recognised adapter source",
    "..hidden": "is not a recognised adapter source",
}


@pytest.mark.parametrize("text", list(REFUSED))
def test_each_refused_form_says_why(text):
    with pytest.raises(AdapterSourceError, match=REFUSED[text]):
        parse_adapter_source(text)


def test_a_value_that_is_not_a_string_is_refused():
    with pytest.raises(AdapterSourceError, match="must be a string"):
        parse_adapter_source(42)


def test_plain_http_is_accepted_where_the_operator_allows_it():
    assert parse_adapter_source("http://files.example/a.safetensors", allow_http=True).kind == "url"


def test_signature_parameters_are_dropped_from_the_key_and_redacted_in_the_display():
    signed = parse_adapter_source(
        "https://bucket.example/a.safetensors?v=2&X-Amz-Signature=abc&X-Amz-Expires=60&token=t0k"
    )
    resigned = parse_adapter_source("https://bucket.example/a.safetensors?v=2&X-Amz-Signature=def")
    assert signed.key == resigned.key == "https://bucket.example/a.safetensors?v=2"
    assert "abc" not in signed.display and "t0k" not in signed.display
    assert "X-Amz-Signature=REDACTED" in signed.display and "v=2" in signed.display


def test_a_civitai_page_and_its_version_have_distinct_keys():
    assert parse_adapter_source("civitai.com/models/1").key == "civitai:model:1"
    assert parse_adapter_source("civitai.com/api/download/models/7").key == "civitai:version:7"
