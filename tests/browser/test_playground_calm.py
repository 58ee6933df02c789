"""The calm playground in a real browser: the folded form, several generations queued with their
running cards (progress, previews, times), captions, the lightbox, "Reuse", the history's paging,
search and delete, the one error box, and the phone layout bringing progress into view.

Screenshots land in test-artifacts/: playground-queue.png (desktop, two queued) and
playground-mobile-running.png (390x844, right after Generate).
"""

from __future__ import annotations

import io
import json
import re
import uuid

import pytest

from tests.browser.conftest import API_KEY
from tests.browser.test_playground_browser import IMAGE_LOADED, expect, fill_small_run, open_advanced

pytestmark = pytest.mark.slow

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}


def webp_bytes(color=(30, 140, 90)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="WEBP")
    return buf.getvalue()


def posted_bodies(page) -> list[dict]:
    """The JSON bodies of the page's creates, recorded from now on."""
    bodies: list[dict] = []

    def record(request):
        if request.method == "POST" and re.search(r"/v1/prediction/?$", request.url):
            bodies.append(json.loads(request.post_data or "{}"))

    page.on("request", record)
    return bodies


def test_advanced_settings_are_folded_and_stay_open_once_opened(new_page, live_server):
    page = new_page(key=API_KEY)
    page.goto(live_server.url + "/")
    expect(page.locator("#f-prompt")).to_be_visible()
    expect(page.get_by_label("Number of images")).to_be_visible()
    expect(page.get_by_label("Steps")).to_be_hidden()

    open_advanced(page)
    expect(page.get_by_label("Steps")).to_be_visible()
    # The details' toggle event (which stores the state) is dispatched after the click returns.
    page.wait_for_function("localStorage.getItem('fluxserve.advancedOpen') === '1'")
    page.reload()
    expect(page.get_by_label("Steps")).to_be_visible()

    page.locator("#advanced-summary").click()
    page.wait_for_function("localStorage.getItem('fluxserve.advancedOpen') === '0'")
    page.reload()
    expect(page.get_by_label("Steps")).to_be_hidden()
    new_page.assert_no_problems()


def test_prompt_strength_shows_only_with_an_input_image(new_page, live_server):
    page = new_page(key=API_KEY)
    page.goto(live_server.url + "/")
    strength = page.get_by_label("Prompt strength")
    expect(strength).to_be_hidden()

    page.locator("#f-image").fill("http://127.0.0.1:9/source.png")
    expect(strength).to_be_visible()
    page.locator("#f-image").fill("")
    expect(strength).to_be_hidden()
    new_page.assert_no_problems()


def test_labels_show_the_api_name_on_hover(new_page, live_server):
    page = new_page(key=API_KEY)
    page.goto(live_server.url + "/")
    label = page.locator("label[for='f-num_inference_steps']")
    expect(label).to_have_text("Steps")
    expect(label).to_have_attribute("title", "API name: num_inference_steps")
    new_page.assert_no_problems()


def test_two_generations_queue_each_with_a_running_card(new_page, live_server, artifacts):
    """Generate stays usable while one runs; each prediction gets a card with its status,
    progress, Cancel and the server's live preview, the times and the queue."""
    page = new_page(key=API_KEY)
    bodies = posted_bodies(page)
    previews: list[str] = []
    page.on(
        "request",
        lambda request: (
            previews.append(request.headers.get("x-api-key", "")) if "/preview?step=" in request.url else None
        ),
    )
    page.goto(live_server.url + "/")

    generate = page.get_by_role("button", name="Generate", exact=True)
    fill_small_run(page, "queued first: a harbour at night", steps=50)
    page.get_by_label("Megapixels").select_option("1")  # long enough to watch, even on a busy box
    generate.click()
    expect(page.locator("#running .run-card")).to_have_count(1)
    expect(generate).to_be_enabled()
    fill_small_run(page, "queued second: a meadow at noon", steps=2)
    generate.click()

    cards = page.locator("#running .run-card")
    expect(cards).to_have_count(2)
    first = cards.filter(has_text="queued first")
    expect(first.get_by_role("button", name="Cancel")).to_be_visible()
    expect(first.locator(".run-preview-img")).to_be_visible(timeout=90_000)
    assert first.locator(".run-preview-img").get_attribute("src").startswith("blob:")
    expect(first.locator(".run-times")).to_contain_text("elapsed")
    expect(first.locator(".run-times")).to_contain_text("left")
    full_screenshot_queue = artifacts / "playground-queue.png"
    page.screenshot(path=str(full_screenshot_queue), full_page=True)
    first.get_by_role("button", name="Cancel").click()  # seen enough: the second one runs next

    expect(page.locator("#running-box")).to_be_hidden(timeout=180_000)
    expect(page.locator("#status-text")).to_contain_text("Done")  # the latest one, in focus
    expect(page.locator("#results .caption-prompt")).to_have_text("queued second: a meadow at noon")
    expect(page.locator("#history")).to_contain_text("queued first: a harbour at night")
    expect(page.locator("#history")).to_contain_text("queued second: a meadow at noon")
    assert len(bodies) == 2 and all(b.get("previews") is True for b in bodies)
    assert previews and all(k == API_KEY for k in previews)  # fetched with the key
    new_page.assert_no_problems()


def test_results_are_captioned_open_in_a_lightbox_and_reuse_restores_the_seed(new_page, live_server):
    page = new_page(key=API_KEY)
    page.goto(live_server.url + "/")
    fill_small_run(page, "a lightbox of two lanterns")
    page.get_by_label("Number of images").fill("2")
    page.get_by_label("Guidance").fill("4.5")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#status-text")).to_contain_text("Done", timeout=120_000)
    page.wait_for_function(IMAGE_LOADED, arg="#results img", timeout=30_000)

    seed = re.search(r"Using seed: (\d+)", page.locator("#logs").text_content()).group(1)
    caption = page.locator("#results figcaption").first
    expect(caption.locator(".caption-prompt")).to_have_text("a lightbox of two lanterns")
    settings = caption.locator(".caption-settings")
    for part in ("512×512 px", "2 steps", "guidance 4.5", f"seed {seed}", "flux-dev"):
        expect(settings).to_contain_text(part)

    # the lightbox: a click opens the image full size, arrows move, Esc and a click close it
    page.locator("#results a.thumb").first.click()
    lightbox = page.locator("#lightbox")
    expect(lightbox).to_be_visible()
    expect(page.locator("#lightbox-caption")).to_contain_text("1 of 2")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#lightbox-caption")).to_contain_text("2 of 2")
    assert page.locator("#lightbox-img").get_attribute("src") == page.locator("#results img").nth(
        1
    ).get_attribute("src")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#lightbox-caption")).to_contain_text("1 of 2")
    page.keyboard.press("Escape")
    expect(lightbox).to_be_hidden()
    page.locator("#results a.thumb").nth(1).click()
    expect(page.locator("#lightbox-caption")).to_contain_text("2 of 2")
    lightbox.click()
    expect(lightbox).to_be_hidden()

    # Reuse: every input back, the random seed as the number it ran with
    page.locator("#f-prompt").fill("something else")
    page.get_by_label("Steps").fill("7")
    page.get_by_label("Guidance").fill("2")
    page.get_by_label("Number of images").fill("1")
    page.locator("#result-reuse").click()
    expect(page.locator("#f-prompt")).to_have_value("a lightbox of two lanterns")
    expect(page.locator("#f-seed")).to_have_value(seed)
    expect(page.get_by_label("Steps")).to_have_value("2")
    expect(page.get_by_label("Guidance")).to_have_value("4.5")
    expect(page.get_by_label("Number of images")).to_have_value("2")
    expect(page.get_by_label("Megapixels")).to_have_value("0.25")

    # the history's Reuse does the same
    page.locator("#f-seed").fill("")
    page.get_by_role("button", name="Reuse the settings of: a lightbox of two lanterns").first.click()
    expect(page.locator("#f-seed")).to_have_value(seed)
    new_page.assert_no_problems()


def _add_finished(live_server, prompt: str, created_at: float) -> str:
    from server.auth.keyring import key_id_for
    from server.predictions.model import CANCELLED, Prediction

    pid = str(uuid.uuid4())
    live_server.app.state.fluxserve.store.create(
        Prediction(
            id=pid,
            owner=key_id_for(API_KEY),
            model="flux-dev",
            input={"prompt": prompt},
            status=CANCELLED,
            created_at=created_at,
        )
    )
    return pid


def test_history_pages_to_the_end_searches_by_prompt_and_deletes(new_page, live_server):
    ids = [_add_finished(live_server, f"Zebra crossing number {i}", 1_000_000.0 + i) for i in range(11)]
    page = new_page(key=API_KEY)
    page.goto(live_server.url + "/")
    expect(page.locator("#history-empty")).to_be_hidden()

    page.locator("#history-search").fill("zebra CROSSING")
    items = page.locator("#history .history-item")
    expect(items).to_have_count(8)
    expect(page.locator("#history-count")).to_have_text("Showing 8 of 11")
    page.get_by_role("button", name="Load more").click()
    expect(items).to_have_count(11)
    expect(page.locator("#history-more")).to_be_hidden()
    expect(page.locator("#history-count")).to_have_text("Showing 11 of 11")

    # delete asks once more on the button, then the prediction is gone for good
    doomed = page.locator(f"#history .history-item[data-id='{ids[10]}']")
    doomed.get_by_role("button", name="Delete").click()
    doomed.get_by_role("button", name="Confirm delete").click()
    expect(doomed).to_have_count(0)
    expect(page.locator("#history-count")).to_have_text("Showing 10 of 10")
    with live_server.api() as api:
        assert api.get(f"/v1/prediction/{ids[10]}").status_code == 404

    page.locator("#history-search").fill("no prompt has these words")
    expect(items).to_have_count(0)
    expect(page.locator("#history-empty")).to_contain_text("No predictions match")
    new_page.assert_no_problems()


def test_the_forms_own_checks_use_the_same_error_box_as_the_server(new_page, live_server):
    page = new_page(key=API_KEY)
    bodies = posted_bodies(page)
    page.goto(live_server.url + "/")
    page.locator("#f-prompt").fill("a checked form")
    open_advanced(page)
    page.get_by_label("Steps").fill("999")
    page.get_by_role("button", name="Generate", exact=True).click()

    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Check the form")
    expect(error.locator("code")).to_have_text("num_inference_steps")
    expect(page.locator("#error-num_inference_steps")).to_be_visible()
    expect(page.get_by_label("Steps")).to_have_attribute("aria-invalid", "true")
    assert bodies == []  # nothing was sent

    # the folded setting is unfolded to show its complaint
    page.get_by_label("Steps").fill("2")
    page.locator("#advanced-summary").click()
    page.get_by_label("Steps").evaluate("(el) => { el.value = '-3'; }")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.locator("#error-num_inference_steps")).to_be_visible()
    assert page.locator("#advanced").get_attribute("open") is not None

    # an empty prompt: the same box, not the browser's bubble
    page.get_by_label("Steps").fill("2")
    page.locator("#f-prompt").fill("")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(error.locator("code")).to_have_text("prompt")
    expect(page.locator("#error-prompt")).to_be_visible()
    assert bodies == []
    new_page.assert_no_problems()


def test_on_a_phone_generate_brings_the_running_card_into_view(new_page, live_server, artifacts):
    page = new_page(key=API_KEY, **PHONE)
    page.goto(live_server.url + "/")
    fill_small_run(page, "a phone run of a small boat", steps=12)
    card = page.locator("#running .run-card")
    expect(card).to_have_count(0)

    page.get_by_role("button", name="Generate", exact=True).tap()
    expect(card).to_be_in_viewport()
    page.screenshot(path=str(artifacts / "playground-mobile-running.png"))
    expect(page.locator("#status-text")).to_contain_text("Done", timeout=120_000)
    new_page.assert_no_problems()
