"""The playground and the share page in a real browser: headless Debian chromium driven by
Playwright against a live fluxserve serving the tiny model.

Screenshots land in test-artifacts/ (repo root, gitignored): playground.png (desktop, after a
generation), playground-mobile.png (390x844) and share.png.
"""

from __future__ import annotations

import io
import re

import pytest

from tests.browser.conftest import API_KEY

pytestmark = pytest.mark.slow

PROMPT = "A red fox in the snow <b>bold</b> & friends"
IMAGE_LOADED = """(sel) => {
  const imgs = [...document.querySelectorAll(sel)];
  return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""
NO_HORIZONTAL_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"


def expect(locator):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def open_advanced(page) -> None:
    """Unfold the settings under "Advanced" (steps, megapixels, seed...) if they are folded."""
    if page.locator("#advanced").get_attribute("open") is None:
        page.locator("#advanced-summary").click()


def fill_small_run(page, prompt: str, steps: int = 2) -> None:
    page.locator("#f-prompt").fill(prompt)
    open_advanced(page)
    page.get_by_label("Megapixels").select_option("0.25")
    page.get_by_label("Steps").fill(str(steps))


def full_screenshot(page, path) -> None:
    """The whole page at once: the viewport grows to the page's height, so sticky parts (the
    form's action bar) sit where they belong instead of where the first screen ended."""
    size = page.viewport_size
    height = page.evaluate("() => document.documentElement.scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": height})
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)


def decoded_image(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_generate_download_and_share(new_page, live_server, artifacts, tmp_path):
    page = new_page()
    page.goto(live_server.url + "/")

    key = page.get_by_label("API key")
    key.fill(API_KEY)
    key.press("Tab")  # the change event: the key is saved and the lists refresh
    assert page.evaluate("() => localStorage.getItem('fluxserve.apiKey')") == API_KEY

    fill_small_run(page, PROMPT)
    page.get_by_role("button", name="Generate", exact=True).click()

    expect(page.locator("#status-text")).to_contain_text("Done", timeout=120_000)
    page.wait_for_function(IMAGE_LOADED, arg="#results img", timeout=30_000)
    assert page.locator("#results img").count() == 1
    # the tiny model announces itself
    expect(page.locator("#model-warning")).to_be_visible()
    expect(page.locator("#model-warning")).to_contain_text("tiny")
    # the progress lines were read, the logs are there
    expect(page.locator("#logs")).to_contain_text("2/2 steps (100%)")

    # one-click download: the file is the image
    link = page.locator("#results a[download]").first
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert re.fullmatch(
        r"a-red-fox-in-the-snow-b-bold-b-friends-[0-9a-f]{8}\.webp", download.suggested_filename
    )
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    image = decoded_image(saved.read_bytes())
    assert image.format == "WEBP" and image.size == (512, 512)

    # the key's recent predictions list it
    expect(page.locator("#history")).to_contain_text(PROMPT)

    full_screenshot(page, artifacts / "playground.png")

    # the share page: the prompt (as text, escaped) and the image, without the key
    share_href = page.locator("a.share-link").get_attribute("href")
    assert re.search(r"/p/[0-9a-f-]{36}$", share_href)
    share = new_page()  # a fresh context: no key in its storage
    share.goto(share_href)
    expect(share.locator("#prompt")).to_have_text(PROMPT)
    assert share.locator("#prompt b").count() == 0  # the <b> stayed text
    share.wait_for_function(IMAGE_LOADED, arg="ul.results-grid img", timeout=30_000)
    expect(share.locator("table.inputs")).to_contain_text("num_inference_steps")
    full_screenshot(share, artifacts / "share.png")

    new_page.assert_no_problems()


def test_phone_layout_keyboard_and_img2img(new_page, live_server, artifacts):
    from PIL import Image

    page = new_page(key=API_KEY, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.goto(live_server.url + "/")
    assert page.evaluate(NO_HORIZONTAL_SCROLL), "the playground scrolls sideways at 390 px"

    # an input image through the file picker, sent as a data: URL (img2img keeps its size)
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 40)).save(buf, format="PNG")
    page.set_input_files(
        "#image-file", files=[{"name": "source.png", "mimeType": "image/png", "buffer": buf.getvalue()}]
    )
    expect(page.locator("#image-preview")).to_be_visible()
    expect(page.locator("#image-preview-text")).to_contain_text("source.png")

    # keyboard only: Ctrl+Enter in the prompt generates
    page.locator("#f-prompt").fill("a tiny red square, img2img")
    open_advanced(page)
    page.get_by_label("Steps").fill("2")
    page.locator("#f-prompt").press("Control+Enter")
    expect(page.locator("#status-text")).to_contain_text("Done", timeout=120_000)
    page.wait_for_function(IMAGE_LOADED, arg="#results img", timeout=30_000)
    src = page.locator("#results img").first.get_attribute("src")
    response = page.request.get(src)
    assert response.ok
    assert decoded_image(response.body()).size == (96, 64)

    page.wait_for_function(IMAGE_LOADED, arg="#history img", timeout=30_000)
    assert page.evaluate(NO_HORIZONTAL_SCROLL), "the playground scrolls sideways at 390 px with results"
    full_screenshot(page, artifacts / "playground-mobile.png")

    share_href = page.locator("a.share-link").get_attribute("href")
    page.goto(share_href)
    expect(page.locator("table.inputs")).to_contain_text("an uploaded image (image/png)")
    assert page.evaluate(NO_HORIZONTAL_SCROLL), "the share page scrolls sideways at 390 px"
    new_page.assert_no_problems()


def test_every_control_has_an_accessible_name(new_page, live_server):
    page = new_page()
    page.goto(live_server.url + "/")
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
          .filter((el) => el.getAttribute('aria-hidden') !== 'true')
          .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                          && !el.getAttribute('aria-labelledby')
                          && !(el.tagName === 'BUTTON' && el.textContent.trim()))
          .map((el) => el.outerHTML.slice(0, 120))"""
    )
    assert unnamed == []
    # every input of the schema is a named form control
    from pipelines.inputs import FluxInputs

    names = page.evaluate("() => [...document.querySelectorAll('#gen-form [name]')].map((el) => el.name)")
    assert set(FluxInputs.model_json_schema()["properties"]) <= set(names)
    new_page.assert_no_problems()


def test_api_errors_are_shown_readably(new_page, live_server):
    page = new_page(key="not-the-right-key")
    page.goto(live_server.url + "/")
    expect(page.locator("#history-empty")).to_contain_text("refused")
    page.locator("#f-prompt").fill("anything")
    page.get_by_role("button", name="Generate", exact=True).click()
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Invalid or missing API key")
    expect(error).to_contain_text("HTTP 401")

    # the right key, an input the server refuses: the details name the field
    page.get_by_label("API key").fill(API_KEY)
    page.locator("#f-prompt").fill("   ")  # passes the browser's `required`, refused by the server
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(error).to_contain_text("Invalid input for model")
    expect(error).to_contain_text("prompt")
    expect(page.locator("#error-prompt")).to_be_visible()
    expect(page.locator("#f-prompt")).to_have_attribute("aria-invalid", "true")
    new_page.assert_no_problems(allow=("status of 401", "status of 400"))


def test_cancel_stops_a_prediction(new_page, live_server):
    page = new_page(key=API_KEY)
    page.goto(live_server.url + "/")
    page.locator("#f-prompt").fill("a long run to cancel")
    open_advanced(page)
    page.get_by_label("Steps").fill("50")
    page.get_by_label("Number of images").fill("4")
    page.get_by_role("button", name="Generate", exact=True).click()
    cancel = page.get_by_role("button", name="Cancel")
    expect(cancel).to_be_enabled(timeout=30_000)
    cancel.click()
    expect(page.locator("#status-text")).to_contain_text("Cancelled", timeout=60_000)
    expect(page.get_by_role("button", name="Generate", exact=True)).to_be_enabled()
    assert page.locator("#results img").count() == 0
    new_page.assert_no_problems()


def test_a_page_served_open_says_so_when_the_server_starts_requiring_a_key(new_page, open_live_server):
    from server.store.sqlite.keys import SQLiteKeyStore

    page = new_page()
    page.goto(open_live_server.url + "/")
    expect(page.locator("#history-empty")).to_contain_text("No predictions yet.")
    notice = page.locator("#auth-notice")
    assert notice.is_hidden()

    SQLiteKeyStore(open_live_server.app.state.fluxserve.settings.db_path).create("first")
    page.wait_for_timeout(1200)  # past the server's re-check of the key store
    page.get_by_role("button", name="Refresh").click()

    expect(notice).to_be_visible()
    expect(notice).to_contain_text("This server now requires an API key")
    expect(notice).to_contain_text("fluxserve keys adopt-open NAME")
    expect(page.locator("#history-empty")).to_contain_text("Enter your API key")
    expect(page.get_by_label("API key")).to_have_attribute("placeholder", "Paste your API key")
    new_page.assert_no_problems(allow=("status of 401",))


def test_a_lora_set_in_the_playground_is_applied(new_page, live_server, tiny_model_dir, artifacts):
    from pipelines.tiny_lora import write_tiny_lora

    settings = live_server.app.state.fluxserve.settings
    write_tiny_lora(tiny_model_dir, settings.lora_dir_path / "watercolor.safetensors")
    page = new_page(key=API_KEY)
    page.goto(live_server.url + "/")

    # the model menu loads the LoRA model's form, the prompt comes along
    page.locator("#f-prompt").fill("a lighthouse, watercolor")
    page.get_by_label("Model").select_option("black-forest-labs-flux-dev-lora")
    page.wait_for_url(re.compile(r"\?model=black-forest-labs-flux-dev-lora$"))
    expect(page.locator("#f-prompt")).to_have_value("a lighthouse, watercolor")
    expect(page.locator("fieldset.loras legend")).to_have_text("LoRA adapters")

    open_advanced(page)
    page.get_by_label("Megapixels").select_option("0.25")
    page.get_by_label("Steps").fill("2")
    page.get_by_label("LoRA", exact=False).first.fill("watercolor")
    page.get_by_label("LoRA strength").first.fill("0.8")
    page.get_by_role("button", name="Generate", exact=True).click()

    expect(page.locator("#status-text")).to_contain_text("Done", timeout=120_000)
    expect(page.locator("#logs")).to_contain_text("LoRA adapter folder: watercolor.safetensors: ready")
    page.wait_for_function(IMAGE_LOADED, arg="#results img", timeout=30_000)
    full_screenshot(page, artifacts / "playground-lora.png")

    with live_server.api() as api:
        (latest,) = api.get("/v1/executions", params={"limit": 1}).json()["executions"]
    assert latest["model"] == "black-forest-labs-flux-dev-lora"
    assert (latest["input"]["lora_weights"], latest["input"]["lora_scale"]) == ("watercolor", 0.8)
    new_page.assert_no_problems()
