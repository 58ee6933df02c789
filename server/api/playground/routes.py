"""The browser front end: the playground at ``/`` and the share page at ``/p/{id}``.

Plain HTML, CSS and JavaScript from ``server/api/playground/static`` (no framework, no CDN: it works offline).

- ``/`` renders the form server-side from the model's input schema (with its configured
  defaults), so the form never drifts from what the API validates. ``/?model=<slug>`` picks one of
  several configured models (flux-dev-lora adds the LoRA fields). The script then
  talks to the public API with the key the user typed (kept in localStorage, sent as X-API-Key).
- ``/p/{id}`` is a capability URL: prediction ids are uuid4 (122 random bits), like the output
  URLs that are already served without a key, so anyone holding the link sees that prediction's
  inputs and images. Rendered server-side with every value escaped; no script runs on it. Turned
  off by ``outputs.share_pages: false`` (and implied off by ``outputs.require_owner_key``, since
  the images would not load without the owner's key); off or unknown, it answers a 404 page.

Every page carries a strict Content-Security-Policy (self only; images from self, data: and
blob:), ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` (a share link
never leaks through a Referer header).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import re
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from string import Template
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from pipelines.inputs import ASPECT_RATIO_SIZES
from pipelines.loras.sources import redact_url
from server.api.deps import app_state
from server.api.eachlabs.render import echo_input
from server.outputs.local import ID_PATTERN
from server.predictions.model import Prediction
from server.predictions.models import ModelEntry
from server.services import AppState

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Assets served at /static/{name}; nothing else in the folder is (the page templates live there too).
ASSETS: dict[str, str] = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

PLAYGROUND_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SHARE_CSP = (
    "default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self' data: blob:; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
ASSET_CSP = "default-src 'none'; frame-ancestors 'none'"

# Friendlier labels than the schema titles; the fields themselves always come from the schema.
LABELS = {
    "prompt": "Prompt",
    "aspect_ratio": "Aspect ratio",
    "megapixels": "Megapixels",
    "image": "Input image (img2img)",
    "prompt_strength": "Prompt strength",
    "num_outputs": "Number of images",
    "num_inference_steps": "Steps",
    "guidance": "Guidance",
    "seed": "Seed",
    "output_format": "Output format",
    "output_quality": "Output quality",
    "disable_safety_checker": "Disable safety checker",
    "go_fast": "Go fast",
    "lora_weights": "LoRA",
    "lora_scale": "LoRA strength",
    "extra_lora": "Second LoRA",
    "extra_lora_scale": "Second LoRA strength",
}
LORA_FIELDS = ("lora_weights", "lora_scale", "extra_lora", "extra_lora_scale")
LORA_PLACEHOLDER = "my-style · https://…/style.safetensors · owner/repo · civitai.com/models/…"
SLIDERS = {
    "prompt_strength",
    "num_inference_steps",
    "guidance",
    "output_quality",
    "lora_scale",
    "extra_lora_scale",
}  # bounded: a slider beside the box
STEPS = {"prompt_strength": "0.01", "guidance": "0.1", "lora_scale": "0.05", "extra_lora_scale": "0.05"}


def security_headers(csp: str, cache: str = "no-cache") -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cache-Control": cache,
    }


# -- files ------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


@lru_cache(maxsize=16)
def _version(name: str) -> str:
    return hashlib.sha256(_read(name)).hexdigest()[:12]


def _template(name: str) -> Template:
    return Template(_read(name).decode("utf-8"))


def asset_url(root: str, name: str) -> str:
    """A relative URL with a content hash, so a new release is never hidden by a cached copy."""
    return f"{root}static/{name}?v={_version(name)}"


# -- small HTML helpers -------------------------------------------------------------------------


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def rich(text: str) -> str:
    """Escape a schema description, then turn `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


def fmt_number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def slug(text: str, limit: int = 48) -> str:
    """The prompt as a file-name fragment (the playground's script does the same)."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return out or "fluxserve"


def download_name(prompt: str, prediction_id: str, index: int, count: int, file_name: str) -> str:
    ext = file_name.rsplit(".", 1)[-1]
    suffix = f"-{index + 1}" if count > 1 else ""
    return f"{slug(prompt)}-{prediction_id[:8]}{suffix}.{ext}"


# -- the form, generated from the input schema ------------------------------------------------------


def _field_schema(prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The non-null branch of a property, and whether null is allowed."""
    if "anyOf" in prop:
        branches = [b for b in prop["anyOf"] if b.get("type") != "null"]
        merged = {**prop, **(branches[0] if branches else {})}
        merged.pop("anyOf", None)
        return merged, len(branches) < len(prop["anyOf"])
    return prop, False


def field_facts(name: str, prop: dict[str, Any], default: Any) -> list[str]:
    """'Default: …', 'Range: …' and the like, for the help line."""
    spec, _ = _field_schema(prop)
    facts = []
    kind = spec.get("type")
    if name == "prompt":
        facts.append("Required")
        if spec.get("maxLength"):
            facts.append(f"up to {spec['maxLength']} characters")
    elif "enum" in spec:
        facts.append(f"Default: {default}")
        facts.append("One of: " + ", ".join(str(v) for v in spec["enum"]))
    elif kind == "boolean":
        facts.append(f"Default: {'on' if default else 'off'}")
    elif kind in ("integer", "number"):
        facts.append("Default: " + ("random" if default is None else fmt_number(default)))
        lo, hi = spec.get("minimum"), spec.get("maximum")
        if name == "seed":
            facts.append("Range: any whole number ≥ 0")
        elif lo is not None and hi is not None:
            facts.append(f"Range: {fmt_number(lo)} to {fmt_number(hi)}")
    elif name == "image":
        facts.append("Default: none (text to image)")
        facts.append("PNG, JPEG or WEBP")
    elif name in LORA_FIELDS:
        facts.append("Default: none")
    return facts


def _help(name: str, prop: dict[str, Any], default: Any) -> str:
    facts = " · ".join(esc(f) for f in field_facts(name, prop, default))
    if name == "prompt":
        facts += " · <kbd>Ctrl</kbd>+<kbd>Enter</kbd> generates"
    return (
        f'<p class="help" id="help-{name}">{rich(prop.get("description", ""))}'
        f"{' <span class=facts>' + facts + '</span>' if facts else ''}</p>"
    )


def _label(name: str, prop: dict[str, Any], for_id: str) -> str:
    """A human label; the API's name for the field shows on hover (and in the help's tooltip)."""
    text = LABELS.get(name) or prop.get("title") or name
    return (
        f'<label for="{for_id}" title="API name: {esc(name)}" data-api-name="{esc(name)}">{esc(text)}</label>'
    )


def _error_slot(name: str) -> str:
    return f'<p class="field-error" id="error-{name}" hidden></p>'


def _wrap(name: str, prop: dict[str, Any], default: Any, control: str, *, extra_class: str = "") -> str:
    """One field: its label, its control, its help line and a slot for the server's complaint."""
    label = _label(name, prop, f"f-{name}")
    head = f'<div class="check-row">{control}{label}</div>' if extra_class == "check" else label + control
    classes = f"field field-{name} {extra_class}".strip()
    return f'<div class="{classes}">{head}{_help(name, prop, default)}{_error_slot(name)}</div>'


def _image_field(prop: dict[str, Any], default: Any) -> str:
    """The img2img source: a drop zone / file picker (sent as a data: URL) or a URL."""
    control = (
        '<div class="dropzone" id="dropzone">'
        '<input type="file" id="image-file" class="visually-hidden" accept="image/png,image/jpeg,image/webp" '
        'aria-describedby="help-image">'
        '<label for="image-file" class="drop-label"><span class="drop-title">Drop an image here, paste one, '
        'or <span class="link-like">choose a file</span></span></label>'
        '<div class="drop-preview" id="image-preview" hidden>'
        '<img id="image-preview-img" alt="The selected input image">'
        '<span id="image-preview-text"></span>'
        '<button type="button" id="image-clear" class="secondary small">Remove image</button>'
        "</div></div>"
        '<label for="f-image" class="sub-label">…or an image URL</label>'
        '<input type="url" id="f-image" name="image" inputmode="url" autocomplete="off" '
        'placeholder="Paste an http(s) image URL" aria-describedby="help-image error-image">'
    )
    label = (
        f'<span class="label-text" id="label-image" title="API name: image" data-api-name="image">'
        f"{esc(LABELS['image'])}</span>"
    )
    return (
        f'<div class="field field-image wide" role="group" aria-labelledby="label-image">{label}{control}'
        f"{_help('image', prop, default)}{_error_slot('image')}</div>"
    )


def render_field(name: str, prop: dict[str, Any], default: Any) -> str:
    """The control for one schema property, chosen from its type, enum and bounds."""
    spec, nullable = _field_schema(prop)
    fid = f"f-{name}"
    described = f'aria-describedby="help-{name} error-{name}"'
    kind = spec.get("type")
    if name == "image":
        return _image_field(prop, default)
    if name == "prompt":
        control = (
            f'<textarea id="{fid}" name="prompt" rows="4" required '
            f'maxlength="{esc(spec.get("maxLength", ""))}" '
            f'{described} placeholder="A lighthouse on a cliff at dusk, watercolor" '
            'spellcheck="true"></textarea>'
        )
        return _wrap(name, prop, default, control, extra_class="wide")
    if "enum" in spec:
        options = "".join(
            f'<option value="{esc(v)}"{" selected" if str(v) == str(default) else ""}>{esc(v)}</option>'
            for v in spec["enum"]
        )
        extra = ""
        if name == "aspect_ratio":  # lets the script show the output size in pixels
            sizes = {ratio: list(size) for ratio, size in ASPECT_RATIO_SIZES.items()}
            extra = f' data-sizes="{esc(json.dumps(sizes, separators=(",", ":")))}"'
        return _wrap(
            name, prop, default, f'<select id="{fid}" name="{name}"{extra} {described}>{options}</select>'
        )
    if kind == "boolean":
        checked = " checked" if default in (True, "true", "True", 1, "1") else ""
        control = f'<input type="checkbox" id="{fid}" name="{name}"{checked} {described}>'
        return _wrap(name, prop, default, control, extra_class="check")
    if kind in ("integer", "number") and (name == "seed" or nullable):
        # Text, not type=number: a 64-bit seed does not survive a float, and empty means random.
        value = "" if default in (None, 0, "0") else esc(default)
        control = (
            f'<input type="text" id="{fid}" name="{name}" inputmode="numeric" '
            'pattern="[0-9]*" autocomplete="off" '
            f'value="{value}" placeholder="random" data-kind="integer" data-nullable="1" {described}>'
        )
        return _wrap(name, prop, default, control)
    if kind in ("integer", "number"):
        lo, hi = spec.get("minimum"), spec.get("maximum")
        step = STEPS.get(name, "1" if kind == "integer" else "any")
        bounds = "".join(
            f' {a}="{esc(fmt_number(v))}"' for a, v in (("min", lo), ("max", hi)) if v is not None
        )
        value = esc(fmt_number(default)) if default is not None else ""
        control = (
            f'<input type="number" id="{fid}" name="{name}" value="{value}" step="{step}"{bounds} required '
            f'data-kind="{kind}" {described}>'
        )
        if name in SLIDERS and lo is not None and hi is not None:
            # The number box is the accessible control; the slider is a mouse/touch shortcut.
            slider = (
                f'<input type="range" class="slider" data-for="{fid}" value="{value}" step="{step}"{bounds} '
                'tabindex="-1" aria-hidden="true">'
            )
            control = f'<div class="number-row">{slider}{control}</div>'
        else:
            control = f'<div class="number-row">{control}</div>'
        return _wrap(name, prop, default, control)
    # Free text: a LoRA source (empty means none), or a field the schema may grow one day.
    placeholder = f' placeholder="{esc(LORA_PLACEHOLDER)}"' if name in LORA_FIELDS else ""
    nullable_attr = ' data-nullable="1"' if nullable else ""
    control = (
        f'<input type="text" id="{fid}" name="{name}" value="{esc(default or "")}" autocomplete="off" '
        f'spellcheck="false"{placeholder}{nullable_attr} {described}>'
    )
    return _wrap(name, prop, default, control, extra_class="wide" if name in LORA_FIELDS else "")


def effective_defaults(model: ModelEntry) -> dict[str, Any]:
    """The model's input defaults: its schema's, overridden by the configured ones."""
    schema = model.input_schema()
    defaults = {name: prop.get("default") for name, prop in schema["properties"].items()}
    for name, value in (model.defaults or {}).items():
        if name in defaults and value is not None:
            defaults[name] = value
    return defaults


# Always in view: what almost every run sets. The rest folds under "Advanced".
MAIN_FIELDS = ("prompt", "image", "prompt_strength", "aspect_ratio", "num_outputs")
LORA_SOURCE = "lora_weights"


def render_form(model: ModelEntry) -> str:
    """The create form of one model: prompt, image (and its prompt strength, shown by the script
    only when there is an image), aspect ratio and number of images in view, with the LoRA source
    in its own group when the model takes one; every other setting folded under "Advanced"."""
    props = model.input_schema()["properties"]
    defaults = effective_defaults(model)

    def field(name: str) -> str:
        return render_field(name, props[name], defaults.get(name))

    main = [field(n) for n in MAIN_FIELDS if n in props]
    lora_group = (
        '<fieldset class="settings loras"><legend>LoRA adapters</legend>'
        f'<div class="fields grid-fields">{field(LORA_SOURCE)}</div></fieldset>'
        if LORA_SOURCE in props
        else ""
    )
    folded = [field(n) for n in props if n not in MAIN_FIELDS and n != LORA_SOURCE]
    return (
        '<div class="fields main-fields">' + "".join(main) + "</div>"
        '<p class="size-note" id="size-note" aria-live="polite"></p>' + lora_group + ""
        '<details class="advanced" id="advanced"><summary id="advanced-summary">Advanced</summary>'
        '<fieldset class="settings"><legend class="visually-hidden">Advanced settings</legend>'
        '<div class="fields grid-fields">' + "".join(folded) + "</div></fieldset></details>"
    )


def render_model_picker(models: list[ModelEntry], current: ModelEntry) -> str:
    """A model menu when the server has several (each loads the page for that model's form)."""
    if len(models) < 2:
        return ""
    options = "".join(
        f'<option value="{esc(m.slug)}"{" selected" if m.slug == current.slug else ""}>'
        f"{esc(m.display_name)} ({esc(m.slug)})</option>"
        for m in models
    )
    return (
        '<div class="field model-field"><label for="model-select">Model</label>'
        f'<select id="model-select" name="model-select" form="">{options}</select>'
        '<p class="help">Each model has its own inputs and defaults.</p></div>'
    )


# -- routes -----------------------------------------------------------------------------------


def _page(body: str, status: int = 200, csp: str = PLAYGROUND_CSP, cache: str = "no-cache") -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=security_headers(csp, cache))


@router.get("/", response_class=HTMLResponse)
async def playground(request: Request) -> HTMLResponse:
    state = app_state(request)
    settings = state.settings
    model = state.models.by_slug(request.query_params.get("model")) or state.models.default
    is_open = await asyncio.to_thread(lambda: state.keyring.open)
    root = ""
    page = _template("playground.html").substitute(
        title=esc(f"{model.slug} playground · fluxserve"),
        model=esc(model.slug),
        css=esc(asset_url(root, "playground.css")),
        js=esc(asset_url(root, "playground.js")),
        icon=esc(asset_url(root, "favicon.svg")),
        open="1" if is_open else "0",
        share="1" if share_enabled(settings) else "0",
        owner_images="1" if settings.outputs.require_owner_key else "0",
        max_image_bytes=esc(settings.input_images.max_bytes),
        form=render_form(model),
        model_picker=render_model_picker(state.models.entries, model),
    )
    return _page(page)


@router.get("/static/{name}")
async def static_asset(name: str, request: Request) -> Response:
    if name not in ASSETS:
        return Response(
            "Not found", status_code=404, media_type="text/plain", headers=security_headers(ASSET_CSP)
        )
    data = await asyncio.to_thread(_read, name)
    etag = f'"{_version(name)}"'
    versioned = request.query_params.get("v") == _version(name)
    cache = "public, max-age=31536000, immutable" if versioned else "no-cache"
    headers = {**security_headers(ASSET_CSP, cache), "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=ASSETS[name], headers=headers)


# -- the share page -----------------------------------------------------------------------------


def share_enabled(settings) -> bool:
    return bool(settings.outputs.share_pages and not settings.outputs.require_owner_key)


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _input_value(name: str, value: Any) -> str:
    if value is None or value == "":
        empty = {"seed": "random", "image": "none (text to image)"}.get(
            name, "none" if name in LORA_FIELDS else "default"
        )
        return f'<span class="muted">{empty}</span>'
    if name == "image" and isinstance(value, str):
        if value.startswith("data:"):
            head = value.split(",", 1)[0].removeprefix("data:").split(";", 1)[0] or "image"
            return f'<span class="muted">an uploaded image ({esc(head)})</span>'
        return f"<code class=wrap>{esc(value[:300])}</code>"
    if name in ("lora_weights", "extra_lora") and isinstance(value, str):
        # A signed URL's signature or a token never shows on a shared page.
        return f"<code class=wrap>{esc(redact_url(value)[:300])}</code>"
    if isinstance(value, bool):
        return "on" if value else "off"
    return esc(value)


def render_share(root: str, state: AppState, pred: Prediction) -> str:
    echoed = echo_input(pred.input if isinstance(pred.input, dict) else {})
    prompt = echoed.get("prompt") if isinstance(echoed.get("prompt"), str) else ""
    names = [] if pred.data_removed else list(pred.output)
    model = state.models.by_slug(pred.model) or state.models.default
    props = model.input_schema()["properties"]
    defaults = effective_defaults(model)

    rows = []
    for name in props:  # only the schema's fields: whatever else a client put in `input` stays private
        if name == "prompt":
            continue
        shown = echoed.get(name)
        if shown is None and name not in ("image", "seed", "lora_weights", "extra_lora"):
            shown = defaults.get(name)
        if name == "seed" and shown in (None, 0, "0") and pred.extra.get("seed") is not None:
            cell = f'{esc(pred.extra["seed"])} <span class="muted">(random)</span>'
        else:
            cell = _input_value(name, shown)
        rows.append(f"<tr><th scope=row><code>{esc(name)}</code></th><td>{cell}</td></tr>")

    figures = []
    for i, name in enumerate(names):
        url = state.outputs.url_for(pred.id, name, root)
        alt = f"Image {i + 1} of {len(names)}: {prompt[:200]}"
        figures.append(
            f'<li><figure><a href="{esc(url)}"><img src="{esc(url)}" alt="{esc(alt)}"></a>'
            f'<figcaption><a class="button" href="{esc(url)}" '
            f'download="{esc(download_name(prompt, pred.id, i, len(names), name))}">Download</a>'
            "</figcaption></figure></li>"
        )

    status_line = {
        "success": "",
        "starting": "This prediction is waiting in the queue. This page reloads until it is done.",
        "processing": "This prediction is running. This page reloads until it is done.",
        "cancelled": "This prediction was cancelled; it has no images.",
        "error": "This prediction failed: " + esc(pred.error or "unknown error"),
    }.get(pred.status, esc(pred.status))
    if pred.data_removed:
        status_line = "The images of this prediction were deleted by the server's retention policy."

    meta = [f"<dt>Status</dt><dd><span class='badge badge-{esc(pred.status)}'>{esc(pred.status)}</span></dd>"]
    meta.append(f"<dt>Model</dt><dd>{esc(pred.model)}</dd>")
    meta.append(f"<dt>Created</dt><dd>{esc(_when(pred.created_at))}</dd>")
    if pred.extra.get("width") and pred.extra.get("height"):
        meta.append(f"<dt>Size</dt><dd>{esc(pred.extra['width'])}×{esc(pred.extra['height'])}</dd>")
    if pred.predict_time is not None:
        meta.append(f"<dt>Generation time</dt><dd>{pred.predict_time:.2f} s</dd>")

    refresh = '<meta http-equiv="refresh" content="5">' if not pred.terminal else ""
    return _template("share.html").substitute(
        title=esc(f"{prompt[:80] or 'Shared prediction'} · fluxserve"),
        refresh=refresh,
        css=esc(asset_url(root, "playground.css")),
        icon=esc(asset_url(root, "favicon.svg")),
        home=esc(root or "./"),
        prompt=esc(prompt),
        status_line=f'<p class="notice">{status_line}</p>' if status_line else "",
        images=f'<ul class="results-grid">{"".join(figures)}</ul>' if figures else "",
        meta="".join(meta),
        rows="".join(rows),
    )


def render_not_found(root: str) -> str:
    return _template("not_found.html").substitute(
        css=esc(asset_url(root, "playground.css")),
        icon=esc(asset_url(root, "favicon.svg")),
        home=esc(root or "./"),
    )


@router.get("/p/{prediction_id}", response_class=HTMLResponse)
async def share_page(prediction_id: str, request: Request) -> HTMLResponse:
    state = app_state(request)
    root = "../"
    pred = None
    if share_enabled(state.settings) and ID_PATTERN.fullmatch(prediction_id):
        pred = await state.predictions.read(prediction_id)
    if pred is None:
        return _page(render_not_found(root), status=404, csp=SHARE_CSP, cache="no-store")
    body = render_share(root, state, pred)
    response = _page(body, csp=SHARE_CSP, cache="private, no-store")
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response
