"""LoRA adapters through the server: flux-dev-lora on the Eachlabs routes, sources fetched by the
worker from a loopback host (allowed in these servers' configs), images compared byte for byte
against flux-dev's on the same loaded weights."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import KEY_A, FileHost, Route, Server, safetensors_bytes

LORA = "black-forest-labs-flux-dev-lora"
BASE = {"prompt": "a lighthouse at dawn", "megapixels": "0.25", "num_inference_steps": 2, "seed": 7}
BASE["output_format"] = "png"  # lossless: equal bytes mean equal pixels

# These servers fetch adapters from 127.0.0.1 over plain http (both refused by default).
LOOPBACK_ADAPTERS = {
    "input_images": {"allowed_hosts": ["127.0.0.1"]},
    "loras": {"allow_http": True, "max_download_mb": 1},
}


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory) -> dict[str, bytes]:
    """Tiny LoRAs for the tiny transformer: two adapters (diffusers layout), the first again in
    kohya's layout, and one with text-encoder weights."""
    from pipelines.tiny_lora import write_tiny_lora

    folder = tmp_path_factory.mktemp("adapters")
    files = {
        "a.safetensors": write_tiny_lora(tiny_model_dir, folder / "a.safetensors", seed=0),
        "b.safetensors": write_tiny_lora(tiny_model_dir, folder / "b.safetensors", seed=1),
        "a-kohya.safetensors": write_tiny_lora(
            tiny_model_dir, folder / "a-kohya.safetensors", seed=0, layout="kohya"
        ),
        "te.safetensors": write_tiny_lora(
            tiny_model_dir, folder / "te.safetensors", seed=2, layout="kohya", text_encoder=True
        ),
    }
    return {name: path.read_bytes() for name, path in files.items()}


@pytest.fixture(scope="module")
def adapter_host(adapters: dict[str, bytes]) -> Iterator[FileHost]:
    host = FileHost()
    for name, data in adapters.items():
        host.routes[f"/{name}"] = Route(data)
    host.routes["/huge.safetensors"] = Route(b"\0" * (2 * 2**20))  # over the 1 MiB cap
    host.routes["/not-a-lora.safetensors"] = Route(safetensors_bytes(16, name="unet.conv.weight"))
    host.routes["/garbage.safetensors"] = Route(b"this is not a safetensors file at all")
    yield host
    host.close()


@pytest.fixture(scope="module")
def lora_server(make_server, adapters) -> Iterator[Server]:
    with make_server(**LOOPBACK_ADAPTERS) as server:
        folder = server.state.settings.lora_dir_path
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "house-style.safetensors").write_bytes(adapters["b.safetensors"])
        yield server


def image(server: Server, body: dict) -> bytes:
    assert body["status"] == "success", body
    url = body["output"] if isinstance(body["output"], str) else body["output"][0]
    answer = server.http.get(server.path(url), headers=server.headers(KEY_A))
    assert answer.status_code == 200
    return answer.content


def pixels(data: bytes) -> bytes:
    """An output's pixels: the files of two models differ in their embedded parameters (model,
    LoRA sources) even where their images are the same."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as decoded:
        return decoded.convert("RGB").tobytes()


def run(server: Server, model: str, **inputs) -> dict:
    r = server.post_create(KEY_A, {**BASE, **inputs}, model=model)
    assert r.status_code == 200, r.text
    return server.wait_for_end(KEY_A, r.json()["predictionID"])


def test_a_lora_changes_the_image_and_says_so_in_the_logs(lora_server, adapter_host):
    plain = pixels(image(lora_server, run(lora_server, "flux-dev")))
    body = run(lora_server, LORA, lora_weights=adapter_host.url("/a.safetensors"))

    assert pixels(image(lora_server, body)) != plain
    assert f"LoRA {adapter_host.url('/a.safetensors')}: ready" in body["logs"]


def test_scale_zero_gives_the_base_images_bytes(lora_server, adapter_host):
    plain = pixels(image(lora_server, run(lora_server, "flux-dev")))
    body = run(lora_server, LORA, lora_weights=adapter_host.url("/a.safetensors"), lora_scale=0)

    assert pixels(image(lora_server, body)) == plain


def test_the_lora_face_without_a_lora_is_flux_dev(lora_server):
    face = pixels(image(lora_server, run(lora_server, LORA)))
    assert face == pixels(image(lora_server, run(lora_server, "flux-dev")))


def test_a_plain_job_after_a_lora_job_gives_the_bytes_it_gave_before(lora_server, adapter_host):
    before = image(lora_server, run(lora_server, "flux-dev", seed=11))
    image(lora_server, run(lora_server, LORA, seed=11, lora_weights=adapter_host.url("/a.safetensors")))

    assert image(lora_server, run(lora_server, "flux-dev", seed=11)) == before


def test_two_adapters_combine_and_their_order_does_not_matter(lora_server, adapter_host):
    a, b = adapter_host.url("/a.safetensors"), adapter_host.url("/b.safetensors")
    only_a = pixels(image(lora_server, run(lora_server, LORA, lora_weights=a)))
    a_then_b = pixels(
        image(lora_server, run(lora_server, LORA, lora_weights=a, extra_lora=b, extra_lora_scale=0.7))
    )
    b_then_a = pixels(
        image(
            lora_server,
            run(lora_server, LORA, lora_weights=b, lora_scale=0.7, extra_lora=a, extra_lora_scale=1),
        )
    )

    assert a_then_b == b_then_a
    assert a_then_b != only_a


def test_kohya_and_diffusers_layouts_of_one_adapter_give_one_image(lora_server, adapter_host):
    diffusers = pixels(
        image(lora_server, run(lora_server, LORA, lora_weights=adapter_host.url("/a.safetensors")))
    )
    kohya = pixels(
        image(lora_server, run(lora_server, LORA, lora_weights=adapter_host.url("/a-kohya.safetensors")))
    )

    assert kohya == diffusers


def test_an_adapter_from_the_operators_folder_is_named_by_its_name(lora_server, adapter_host):
    by_name = run(lora_server, LORA, lora_weights="house-style")
    by_url = run(lora_server, LORA, lora_weights=adapter_host.url("/b.safetensors"))

    assert pixels(image(lora_server, by_name)) == pixels(image(lora_server, by_url))
    assert "LoRA adapter folder: house-style.safetensors: ready" in by_name["logs"]


def test_text_encoder_weights_are_ignored_with_a_warning(lora_server, adapter_host):
    body = run(lora_server, LORA, lora_weights=adapter_host.url("/te.safetensors"))

    assert body["status"] == "success"
    assert "text-encoder" in body["logs"] and "ignored" in body["logs"]


def test_a_url_asked_again_is_not_downloaded_again(lora_server, adapter_host):
    adapter_host.routes["/again.safetensors"] = adapter_host.routes["/a.safetensors"]
    for seed in (1, 2):
        run(lora_server, LORA, seed=seed, lora_weights=adapter_host.url("/again.safetensors"))

    assert adapter_host.hits["/again.safetensors"] == 1


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/missing.safetensors", "HTTP 404"),
        ("/huge.safetensors", "larger than 1 MiB"),
        ("/garbage.safetensors", "not a safetensors file"),
        ("/not-a-lora.safetensors", "not a Flux LoRA"),
    ],
)
def test_a_bad_adapter_ends_the_prediction_in_error_and_the_worker_keeps_serving(
    lora_server, adapter_host, path, message
):
    before = image(lora_server, run(lora_server, "flux-dev", seed=5))
    body = run(lora_server, LORA, lora_weights=adapter_host.url(path))

    assert body["status"] == "error"
    assert message in body["error"], body["error"]
    assert image(lora_server, run(lora_server, "flux-dev", seed=5)) == before
    cache = lora_server.state.settings.lora_cache_path
    leftovers = [p.name for p in cache.rglob("*") if p.is_file() and p.suffix not in (".lock", ".fetch")]
    assert not any(name.endswith(".part") or name.startswith(".") for name in leftovers), leftovers


def test_a_private_address_is_refused_where_the_operator_has_not_allowed_it(live_server, adapter_host):
    # The shared server allows neither loopback fetches nor http adapters: refused at create...
    r = live_server.post_create(
        KEY_A, {**BASE, "lora_weights": adapter_host.url("/a.safetensors")}, model=LORA
    )
    assert r.status_code == 400
    assert "https://" in r.json()["details"]["lora_weights"]


def test_a_loopback_https_url_is_refused_by_the_worker(live_server):
    # ...and an https URL that resolves to loopback is refused when the worker fetches it.
    r = live_server.post_create(
        KEY_A, {**BASE, "lora_weights": "https://127.0.0.1:9/style.safetensors"}, model=LORA
    )
    body = live_server.wait_for_end(KEY_A, r.json()["predictionID"])

    assert body["status"] == "error"
    assert "private" in body["error"] or "loopback" in body["error"], body["error"]


@pytest.mark.parametrize(
    "source", ["ftp://example.com/a.safetensors", "https://example.com/a.ckpt", "../../etc/passwd", "a b"]
)
def test_a_source_in_no_accepted_form_is_refused_at_create_listing_the_forms(live_server, source):
    r = live_server.post_create(KEY_A, {**BASE, "lora_weights": source}, model=LORA)

    assert r.status_code == 400
    reason = r.json()["details"]["lora_weights"]
    assert "huggingface.co/<owner>/<repo>" in reason and "civitai.com/models/<id>" in reason, reason


def test_a_scale_out_of_range_is_refused_at_create(live_server):
    r = live_server.post_create(KEY_A, {**BASE, "lora_weights": "my-style", "lora_scale": 3.5}, model=LORA)

    assert r.status_code == 400
    assert "lora_scale" in r.json()["details"]


@pytest.mark.slow
def test_one_url_asked_by_three_predictions_at_once_is_downloaded_once(make_server, adapters):
    host = FileHost()
    host.routes["/shared.safetensors"] = Route(adapters["a.safetensors"], delay_s=1.0)
    try:
        with make_server(workers={"count": 3}, **LOOPBACK_ADAPTERS) as server:
            for _ in range(600):  # all three workers loaded
                if sum(w["state"] == "ready" for w in server.health()["workers"]) == 3:
                    break
                threading.Event().wait(0.1)
            ids = [
                server.create(
                    KEY_A,
                    {**BASE, "seed": seed, "lora_weights": host.url("/shared.safetensors")},
                    model=LORA,
                )
                for seed in (1, 2, 3)
            ]
            bodies = [server.wait_for_end(KEY_A, pid) for pid in ids]
            rows = [server.store.get(pid) for pid in ids]

        assert [b["status"] for b in bodies] == ["success"] * 3, bodies
        assert host.hits["/shared.safetensors"] == 1
        # Three workers asked at once: each started before any ended.
        assert len({row.worker_id for row in rows}) == 3
        assert max(row.started_at for row in rows) < min(row.completed_at for row in rows)
    finally:
        host.close()


def test_lora_inputs_on_an_fp8_transformer_are_refused_at_create(make_server):
    # diffusers cannot put LoRA layers on torchao float8 weights: the client hears it at create.
    with make_server(start_workers=False, wait_ready=False, model={"quantize_transformer": "fp8"}) as server:
        refused = server.post_create(KEY_A, {**BASE, "lora_weights": "house-style"}, model=LORA)
        plain = server.post_create(KEY_A, BASE, model=LORA)

    assert refused.status_code == 400
    assert "fp8" in refused.json()["details"]["lora_weights"]
    assert plain.status_code == 200
