"""The playground (/) and the share page (/p/{id}) without a browser: what the server sends."""

from __future__ import annotations

import io
import re
import time
import uuid
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from pipelines.inputs import FluxInputs
from pipelines.spec import ModelSpec
from server.app import create_app
from server.config import OutputSettings, Settings
from server.predictions.model import Prediction

KEY = "playground-test-key-0123456789"
INPUT_NAMES = list(FluxInputs.model_json_schema()["properties"])
EVIL_PROMPT = '<script>alert("x")</script> & <img src=x onerror=alert(1)> "quoted"'


def make_client(tmp_path, **overrides) -> TestClient:
    settings = Settings(data_dir=str(tmp_path / "data"), api_keys=[KEY], **overrides)
    return TestClient(create_app(settings, start_workers=False))


@pytest.fixture
def client(tmp_path):
    with make_client(tmp_path) as c:
        yield c


def webp_bytes(size=(32, 24)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, format="WEBP")
    return buf.getvalue()


def add_prediction(
    client: TestClient,
    *,
    prompt: str = EVIL_PROMPT,
    status: str = "success",
    images: int = 1,
    model: str = "flux-dev",
    **input_extra,
) -> str:
    """A finished prediction straight in the store, with real output files."""
    state = client.app.state.fluxserve
    pid = str(uuid.uuid4())
    state.store.create(
        Prediction(
            id=pid,
            owner="someone",
            model=model,
            input={"prompt": prompt, "num_inference_steps": "4", **input_extra},
            created_at=time.time(),
            webhook_url="https://hooks.example/secret-hook",
        )
    )
    if status == "success":
        names = state.outputs.save_all(pid, [(f"out-{i}.webp", webp_bytes()) for i in range(images)])
        state.store.finish(
            pid, "success", output=names, predict_time=1.25, extra={"seed": 4242, "width": 32, "height": 24}
        )
    elif status == "error":
        state.store.finish(pid, "error", error="boom <b>bad</b>")
    return pid


class Links(HTMLParser):
    """Every URL an HTML page points at (src, href, action)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "action") and value is not None:
                self.urls.append(value)


def links_of(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


# -- the playground ---------------------------------------------------------------------------


def test_playground_is_html_served_without_a_key(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<form" in r.text and 'id="gen-form"' in r.text


@pytest.mark.parametrize("name", INPUT_NAMES)
def test_playground_has_a_labelled_control_for_every_input(client, name):
    page = client.get("/").text
    assert f'name="{name}"' in page
    assert f'<label for="f-{name}"' in page
    assert f'id="help-{name}"' in page


def test_playground_shows_defaults_ranges_and_help_from_the_schema(client):
    page = client.get("/").text
    schema = FluxInputs.model_json_schema()["properties"]
    steps = re.search(r'<input type="number" id="f-num_inference_steps"[^>]*>', page).group(0)
    assert 'value="28"' in steps and 'min="1"' in steps and 'max="50"' in steps
    guidance = re.search(r'<input type="number" id="f-guidance"[^>]*>', page).group(0)
    assert 'value="3.5"' in guidance and 'min="0"' in guidance and 'max="10"' in guidance
    assert "Default: 28 · Range: 1 to 50" in page
    assert re.search(r'<option value="1:1" selected>', page)
    assert re.search(r'<option value="webp" selected>', page)
    for prop in schema.values():  # every help text (its `code` spans rendered as <code>)
        described = re.sub(r"`([^`]+)`", r"<code>\1</code>", prop["description"].replace("&", "&amp;"))
        assert described in page


def test_playground_uses_the_models_configured_defaults(tmp_path):
    with make_client(
        tmp_path, model=ModelSpec(defaults={"num_inference_steps": 20, "output_format": "png"})
    ) as c:
        page = c.get("/").text
    steps = re.search(r'<input type="number" id="f-num_inference_steps"[^>]*>', page).group(0)
    assert 'value="20"' in steps
    assert '<option value="png" selected>' in page


LORA = "black-forest-labs-flux-dev-lora"
LORA_NAMES = ("lora_weights", "lora_scale", "extra_lora", "extra_lora_scale")


def test_the_lora_models_form_adds_the_lora_fields_with_their_ranges(client):
    plain = client.get("/").text
    page = client.get("/", params={"model": LORA}).text

    assert not any(f'name="{name}"' in plain for name in LORA_NAMES)
    for name in LORA_NAMES:
        assert f'name="{name}"' in page and f'<label for="f-{name}"' in page
    scale = re.search(r'<input type="number" id="f-lora_scale"[^>]*>', page).group(0)
    assert 'value="1"' in scale and 'min="-1"' in scale and 'max="3"' in scale
    source = re.search(r'<input type="text" id="f-lora_weights"[^>]*>', page).group(0)
    assert 'data-nullable="1"' in source and "huggingface" not in source  # a placeholder, not a value
    assert f'data-model="{LORA}"' in page


def test_the_model_menu_lists_each_configured_model_and_marks_the_current_one(client):
    page = client.get("/", params={"model": LORA}).text
    menu = re.search(r'<select id="model-select".*?</select>', page, re.S).group(0)

    assert re.findall(r'<option value="([^"]+)"', menu) == ["flux-dev", LORA]
    assert f'<option value="{LORA}" selected>' in menu


def test_an_unknown_model_in_the_address_shows_the_default_models_form(client):
    page = client.get("/", params={"model": "sdxl"}).text
    assert 'data-model="flux-dev"' in page and 'name="lora_weights"' not in page


def test_one_model_without_a_lora_face_has_no_menu(tmp_path):
    with make_client(tmp_path, model=ModelSpec(lora=False)) as c:
        assert 'id="model-select"' not in c.get("/").text


def test_the_schnell_form_caps_steps_at_four_and_has_no_guidance(tmp_path):
    with make_client(tmp_path, models=[{"family": "flux-schnell"}]) as c:
        page = c.get("/").text
    steps = re.search(r'<input type="number" id="f-num_inference_steps"[^>]*>', page).group(0)
    assert 'value="4"' in steps and 'max="4"' in steps
    assert 'name="guidance"' not in page


def test_a_share_page_shows_lora_sources_without_their_signatures(client):
    signed = "https://bucket.example/style.safetensors?X-Amz-Signature=deadbeef&X-Amz-Credential=me&v=2"
    pid = add_prediction(client, model=LORA, lora_weights=signed, lora_scale=0.5)
    page = client.get(f"/p/{pid}").text

    assert "deadbeef" not in page and "X-Amz-Credential=me" not in page
    assert "https://bucket.example/style.safetensors?" in page and "v=2" in page
    assert "<code>lora_scale</code></th><td>0.5</td>" in page
    assert '<code>extra_lora</code></th><td><span class="muted">none</span>' in page


def test_playground_references_nothing_outside_this_server(client):
    r = client.get("/")
    page = r.text
    assert not re.search(r"(?i)https?://", page.replace("http://testserver", ""))
    urls = links_of(page).urls
    assert urls, "the page links its assets"
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{url} leaves the server"
    for name in ("playground.js", "playground.css"):
        body = client.get(f"/static/{name}").text
        assert not re.search(r"(?i)https?://", body), f"{name} names an external URL"
        assert "@import" not in body and "fonts.googleapis" not in body


def test_every_asset_the_page_links_is_served_with_its_content_type(client):
    page = client.get("/").text
    expected = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    seen = set()
    for url in links_of(page).urls:
        path = urlsplit(urljoin("http://testserver/", url)).path
        if not path.startswith("/static/"):
            continue
        r = client.get(urljoin("http://testserver/", url))
        assert r.status_code == 200, url
        ext = path[path.rfind(".") :]
        assert r.headers["content-type"].startswith(expected[ext]), (url, r.headers["content-type"])
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "immutable" in r.headers["cache-control"]  # versioned URL
        seen.add(ext)
    assert seen == {".js", ".css", ".svg"}


def test_assets_answer_304_to_their_etag_and_unknown_files_404(client):
    r = client.get("/static/playground.css")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
    again = client.get("/static/playground.css", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    for name in ("playground.html", "share.html", "nope.js", "..%2Fconfig.py"):
        assert client.get(f"/static/{name}").status_code == 404


def test_playground_security_headers(client):
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["img-src"] == "'self' data: blob:"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_playground_has_no_inline_script_or_style(client):
    page = client.get("/").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers


def test_playground_tells_the_script_about_the_server(tmp_path):
    with make_client(tmp_path) as c:
        page = c.get("/").text
        assert 'data-open="0"' in page and 'data-share="1"' in page and 'data-owner-images="0"' in page
        assert 'data-model="flux-dev"' in page
    open_app = create_app(Settings(data_dir=str(tmp_path / "open")), start_workers=False)
    with TestClient(open_app, base_url="http://127.0.0.1:8000") as c:  # open: loopback Host names only
        assert 'data-open="1"' in c.get("/").text


def test_page_routes_stay_out_of_the_api_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and "/p/{prediction_id}" not in paths and "/static/{name}" not in paths


# -- the share page -----------------------------------------------------------------------------


def test_share_page_shows_the_prompt_escaped_and_the_images(client):
    pid = add_prediction(client, images=2)
    r = client.get(f"/p/{pid}")  # no key: the link is the capability
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert (
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;" in page
    )
    assert "<script" not in page  # neither the prompt's nor any other
    assert "onerror=alert" not in page.replace("&lt;img src=x onerror=alert(1)&gt;", "")
    for i in range(2):
        assert f'src="../v1/outputs/{pid}/out-{i}.webp"' in page
        # a file name from the prompt (cut to 48 characters), the id and the index
        assert f'download="script-alert-x-script-img-src-x-onerror-alert-1-{pid[:8]}-{i + 1}.webp"' in page
    # the images it points at are served without a key
    image = client.get(urljoin(f"http://testserver/p/{pid}", f"../v1/outputs/{pid}/out-0.webp"))
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp"
    assert "4242" in page and "32×24" in page  # the seed used and the size
    assert "<code>num_inference_steps</code></th><td>4</td>" in page


def test_share_page_security_headers(client):
    pid = add_prediction(client)
    r = client.get(f"/p/{pid}")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'none'" in csp and "img-src 'self' data: blob:" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "no-store" in r.headers["cache-control"]
    assert "noindex" in r.headers["x-robots-tag"]


def test_share_page_shows_only_the_schemas_inputs(client):
    pid = add_prediction(client, private_note="do not show me", image="data:image/png;base64," + "A" * 5000)
    page = client.get(f"/p/{pid}").text
    assert "do not show me" not in page and "private_note" not in page
    assert "secret-hook" not in page  # the webhook is not an input
    assert "AAAA" not in page and "an uploaded image (image/png)" in page
    for name in INPUT_NAMES:
        if name != "prompt":
            assert f"<code>{name}</code>" in page


def test_share_page_of_a_failed_or_running_prediction(client):
    failed = add_prediction(client, status="error")
    page = client.get(f"/p/{failed}").text
    assert "boom &lt;b&gt;bad&lt;/b&gt;" in page and "<b>bad" not in page
    running = add_prediction(client, status="starting")
    page = client.get(f"/p/{running}").text
    assert '<meta http-equiv="refresh" content="5">' in page


@pytest.mark.parametrize(
    "pid", [str(uuid.uuid4()), "not-a-uuid", "0" * 200, "%3Cscript%3Ealert(1)%3C%5Cscript%3E"]
)
def test_unknown_share_id_is_a_404_page(client, pid):
    r = client.get(f"/p/{pid}")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert "Prediction not found" in r.text
    assert "alert" not in r.text  # the id is never echoed
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_share_pages_can_be_turned_off(tmp_path):
    with make_client(tmp_path, outputs=OutputSettings(share_pages=False)) as c:
        pid = add_prediction(c)
        assert c.get(f"/p/{pid}").status_code == 404
        assert 'data-share="0"' in c.get("/").text


def test_owner_only_outputs_turn_share_pages_off(tmp_path):
    with make_client(tmp_path, outputs=OutputSettings(require_owner_key=True)) as c:
        pid = add_prediction(c)
        assert c.get(f"/p/{pid}").status_code == 404
        page = c.get("/").text
        assert 'data-share="0"' in page and 'data-owner-images="1"' in page


# -- the calm form ------------------------------------------------------------------------------

IN_VIEW = ("prompt", "image", "prompt_strength", "aspect_ratio", "num_outputs")


def _split_at_advanced(page: str) -> tuple[str, str]:
    before, folded = page.split('<details class="advanced" id="advanced">', 1)
    return before, folded.split("</details>", 1)[0]


def test_every_setting_but_the_everyday_ones_is_folded_under_advanced(client):
    before, folded = _split_at_advanced(client.get("/").text)

    for name in IN_VIEW:
        assert f'name="{name}"' in before, name
    for name in set(INPUT_NAMES) - set(IN_VIEW):
        assert f'name="{name}"' in folded and f'name="{name}"' not in before, name
    assert "<summary" in folded and ">Advanced</summary>" in folded


def test_the_lora_models_source_stays_in_view_and_its_other_fields_fold(client):
    before, folded = _split_at_advanced(client.get("/", params={"model": LORA}).text)

    assert 'name="lora_weights"' in before
    for name in ("lora_scale", "extra_lora", "extra_lora_scale"):
        assert f'name="{name}"' in folded, name


def test_labels_are_human_with_the_api_name_on_hover(client):
    page = client.get("/").text

    steps = re.search(r'<label for="f-num_inference_steps"[^>]*>[^<]*</label>', page).group(0)
    assert 'title="API name: num_inference_steps"' in steps
    assert steps.endswith(">Steps</label>")
    assert '<code class="name">' not in page
