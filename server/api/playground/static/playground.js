// fluxserve playground: plain JavaScript, no framework, nothing loaded from elsewhere.
// The form is rendered by the server from the input schema; this script sends it to the public
// API with the key typed by the user (kept in localStorage, sent as X-API-Key), follows the
// prediction with long polls (GET ?wait=1), and lists the key's recent predictions.
// Text from the API (prompts, errors, logs) is only ever set with textContent.
"use strict";

(function () {
  const body = document.body;
  const cfg = {
    model: body.dataset.model || "flux-dev",
    open: body.dataset.open === "1",
    share: body.dataset.share === "1",
    ownerImages: body.dataset.ownerImages === "1",
    maxImageBytes: Number(body.dataset.maxImageBytes) || 10 * 1024 * 1024,
  };
  const ROOT = new URL("./", window.location.href);
  const TERMINAL = new Set(["success", "error", "cancelled"]);
  const KEY_STORAGE = "fluxserve.apiKey";
  const POLL_WAIT_S = 1;
  const HISTORY_PAGE = 8;
  const IMAGE_TYPES = /^image\/(png|jpeg|webp)$/;

  const $ = (id) => document.getElementById(id);
  const els = {
    key: $("api-key"),
    keyToggle: $("key-toggle"),
    keyForget: $("key-forget"),
    form: $("gen-form"),
    prompt: $("f-prompt"),
    imageUrl: $("f-image"),
    imageFile: $("image-file"),
    dropzone: $("dropzone"),
    preview: $("image-preview"),
    previewImg: $("image-preview-img"),
    previewText: $("image-preview-text"),
    imageClear: $("image-clear"),
    generate: $("generate"),
    advanced: $("advanced"),
    error: $("error"),
    statusText: $("status-text"),
    progress: $("progress"),
    resultMeta: $("result-meta"),
    results: $("results"),
    resultTitle: $("result-title"),
    logsBox: $("logs-box"),
    logs: $("logs"),
    running: $("running"),
    runningBox: $("running-box"),
    lightbox: $("lightbox"),
    lightboxImg: $("lightbox-img"),
    lightboxCaption: $("lightbox-caption"),
    historySearch: $("history-search"),
    historyCount: $("history-count"),
    history: $("history"),
    historyEmpty: $("history-empty"),
    historyMore: $("history-more"),
    historyRefresh: $("history-refresh"),
    serverStatus: $("server-status"),
    serverStatusText: $("server-status-text"),
    warning: $("model-warning"),
    authNotice: $("auth-notice"),
  };

  // -- small helpers ---------------------------------------------------------------------------

  /** Build an element; strings among the children become text nodes (never HTML). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "text") el.textContent = value;
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function storage() {
    try {
      return window.localStorage;
    } catch (_) {
      return null; // storage disabled: the key lives in the field only
    }
  }

  function slug(text, limit = 48) {
    const out = (text || "")
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, "-")
      .replace(/^-+|-+$/g, "")
      .slice(0, limit)
      .replace(/-+$/g, "");
    return out || "fluxserve";
  }

  function downloadName(prompt, id, index, count, url) {
    const ext = (url.split("?")[0].split(".").pop() || "webp").toLowerCase();
    return `${slug(prompt)}-${id.slice(0, 8)}${count > 1 ? "-" + (index + 1) : ""}.${ext}`;
  }

  /** Output and preview URLs are absolute (the server's public URL); fetch them from this page's
   * origin. */
  function localUrl(url) {
    try {
      const parsed = new URL(url, ROOT);
      const at = parsed.pathname.indexOf("/v1/");
      return at >= 0 ? new URL(parsed.pathname.slice(at + 1) + parsed.search, ROOT).href : parsed.href;
    } catch (_) {
      return url;
    }
  }

  function outputList(pred) {
    if (!pred || !pred.output) return [];
    return Array.isArray(pred.output) ? pred.output : [pred.output];
  }

  function progressOf(logs) {
    const re = /(\d+)\/(\d+) steps \((\d+)%\)/g;
    let match;
    let last = null;
    while ((match = re.exec(logs || "")) !== null) last = match;
    if (!last) return null;
    const done = Number(last[1]);
    const total = Number(last[2]);
    return { done, total, percent: total ? Math.floor((100 * done) / total) : 0 };
  }

  function seedOf(pred) {
    const match = /Using seed: (\d+)/.exec((pred && pred.logs) || "");
    return match ? match[1] : null;
  }

  const relative = typeof Intl !== "undefined" && Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }) : null;

  function timeAgo(iso) {
    const then = Date.parse(iso);
    if (!iso || Number.isNaN(then)) return "";
    const seconds = Math.round((then - Date.now()) / 1000);
    if (!relative) return new Date(then).toLocaleString();
    const steps = [
      [60, "second"],
      [60, "minute"],
      [24, "hour"],
      [7, "day"],
      [4.35, "week"],
      [12, "month"],
      [Infinity, "year"],
    ];
    let value = seconds;
    for (const [size, unit] of steps) {
      if (Math.abs(value) < size) return relative.format(Math.round(value), unit);
      value /= size;
    }
    return new Date(then).toLocaleString();
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  // -- the API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, details, retryAfter) {
      super(message);
      this.name = "ApiError";
      this.status = status;
      this.details = details;
      this.retryAfter = retryAfter;
    }
  }

  function apiKey() {
    return els.key.value.trim();
  }

  async function api(path, { method = "GET", body, signal } = {}) {
    const headers = { Accept: "application/json" };
    const key = apiKey();
    if (key) headers["X-API-Key"] = key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(new URL(path, ROOT), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: "no-store",
        credentials: "omit",
      });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError(0, "Could not reach the server", "Check the connection; the server may be restarting.");
    }
    if (response.status === 401) becameKeyed();
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const err = data && typeof data === "object" ? data : {};
      const details = err.details !== undefined ? err.details : data ? undefined : text.slice(0, 300) || undefined;
      throw new ApiError(response.status, err.error || `HTTP ${response.status}`, details, response.headers.get("Retry-After"));
    }
    return data;
  }

  /** An image URL the browser can show: the output URL itself, or (when the server serves images
   * only to their owner's key) a blob: URL fetched with the key. */
  const blobUrls = new Set();
  async function imageSource(url) {
    if (!cfg.ownerImages) return localUrl(url);
    const blobUrl = await keyedBlob(url);
    blobUrls.add(blobUrl);
    return blobUrl;
  }

  /** A blob: URL of an image fetched with the key (previews are served to their owner only);
   * the caller revokes it. */
  async function keyedBlob(url) {
    const local = localUrl(url);
    const headers = {};
    if (apiKey()) headers["X-API-Key"] = apiKey();
    const response = await fetch(local, { headers, credentials: "omit" });
    if (!response.ok) throw new ApiError(response.status, "Image not available");
    return URL.createObjectURL(await response.blob());
  }

  function releaseBlobs(root) {
    for (const el of root.querySelectorAll("img[src^='blob:']")) {
      if (blobUrls.has(el.src)) {
        URL.revokeObjectURL(el.src);
        blobUrls.delete(el.src);
      }
    }
  }

  // -- errors ----------------------------------------------------------------------------------

  function clearFieldErrors() {
    for (const slot of document.querySelectorAll(".field-error")) {
      slot.textContent = "";
      slot.hidden = true;
    }
    for (const el of els.form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  function clearError() {
    els.error.hidden = true;
    els.error.replaceChildren();
    clearFieldErrors();
  }

  function markField(name, message) {
    const field = name.replace(/^input\./, "");
    const slot = $(`error-${field}`);
    const control = $(`f-${field}`);
    if (!slot) return false;
    slot.textContent = message;
    slot.hidden = false;
    if (control) control.setAttribute("aria-invalid", "true");
    const folded = slot.closest("details");
    if (folded) folded.open = true; // a complaint about an advanced setting shows it
    return true;
  }

  function showError(err, heading) {
    if (!err || err.name === "AbortError") return;
    clearError();
    const status = err instanceof ApiError ? err.status : 0;
    const title = heading || err.message || String(err);
    const parts = [h("p", { class: "error-title" }, title, status ? h("span", { class: "muted" }, ` (HTTP ${status})`) : null)];
    if (heading && err.message && err.message !== heading) parts.push(h("p", {}, err.message));
    const details = err.details;
    let firstField = null;
    if (details && typeof details === "object") {
      const items = [];
      for (const [field, reason] of Object.entries(details)) {
        const text = typeof reason === "string" ? reason : JSON.stringify(reason);
        items.push(h("li", {}, h("code", {}, field), ": ", text));
        if (markField(field, text) && !firstField) firstField = $(`f-${field.replace(/^input\./, "")}`);
      }
      parts.push(h("ul", {}, items));
    } else if (details !== undefined && details !== null && details !== "") {
      parts.push(h("p", {}, String(details)));
    }
    if (status === 401) parts.push(h("p", { class: "hint" }, "Check the API key at the top of the form."));
    if (status === 429 && err.retryAfter) parts.push(h("p", { class: "hint" }, `Try again in ${err.retryAfter} s.`));
    if (status === 413) parts.push(h("p", { class: "hint" }, "The request is too large: use a smaller input image."));
    els.error.append(...parts);
    els.error.hidden = false;
    if (firstField) firstField.focus();
  }

  // -- the key ---------------------------------------------------------------------------------

  /** The page was served open, and the server now wants a key: a stored key was created on the
   * server since. Say so, and ask for a key from now on. */
  function becameKeyed() {
    if (!cfg.open) return;
    cfg.open = false;
    els.key.placeholder = "Paste your API key";
    els.key.required = true;
    els.authNotice.replaceChildren(
      h("strong", {}, "This server now requires an API key. "),
      "An API key was created on the server since this page was opened, so requests without a key are refused. " +
        "Paste a key above. Predictions made before belong to no key until the operator runs ",
      h("code", {}, "fluxserve keys adopt-open NAME"),
      "."
    );
    els.authNotice.hidden = false;
  }

  function setupKey() {
    const saved = storage() && storage().getItem(KEY_STORAGE);
    if (saved) els.key.value = saved;
    if (cfg.open) {
      els.key.placeholder = "Not needed: this server runs without keys";
    } else {
      els.key.placeholder = "Paste your API key";
      els.key.required = true;
    }
    els.key.addEventListener("input", () => {
      const s = storage();
      if (!s) return;
      if (apiKey()) s.setItem(KEY_STORAGE, apiKey());
      else s.removeItem(KEY_STORAGE);
    });
    els.key.addEventListener("change", () => {
      clearError();
      refreshModelInfo();
      loadHistory(true);
    });
    els.keyToggle.addEventListener("click", () => {
      const show = els.key.type === "password";
      els.key.type = show ? "text" : "password";
      els.keyToggle.textContent = show ? "Hide" : "Show";
      els.keyToggle.setAttribute("aria-pressed", show ? "true" : "false");
    });
    els.keyForget.addEventListener("click", () => {
      els.key.value = "";
      const s = storage();
      if (s) s.removeItem(KEY_STORAGE);
      els.history.replaceChildren();
      els.historyMore.hidden = true;
      els.historyEmpty.textContent = "Enter your API key to see your recent predictions.";
      els.historyEmpty.hidden = false;
      els.key.focus();
    });
  }

  // -- the form --------------------------------------------------------------------------------

  function syncSliders() {
    for (const slider of document.querySelectorAll("input.slider")) {
      const box = $(slider.dataset.for);
      if (box) slider.value = box.value;
    }
  }

  function setupSliders() {
    for (const slider of document.querySelectorAll("input.slider")) {
      const box = $(slider.dataset.for);
      if (!box) continue;
      slider.addEventListener("input", () => {
        box.value = slider.value;
        box.dispatchEvent(new Event("change", { bubbles: true }));
      });
      box.addEventListener("input", () => {
        if (box.value !== "") slider.value = box.value;
      });
    }
  }

  let uploaded = null; // {dataUrl, name, size, previewUrl}

  function clearUpload() {
    if (uploaded && uploaded.previewUrl) URL.revokeObjectURL(uploaded.previewUrl);
    uploaded = null;
    els.preview.hidden = true;
    els.previewImg.removeAttribute("src");
    els.previewText.textContent = "";
    els.imageFile.value = "";
    els.imageUrl.disabled = false;
    els.dropzone.classList.remove("has-image");
    updateSizeNote();
  }

  function handleFile(file) {
    if (!file) return;
    if (!IMAGE_TYPES.test(file.type)) {
      showError(new ApiError(0, "Unsupported image", `${file.name || "The file"} is not a PNG, JPEG or WEBP image.`));
      return;
    }
    if (file.size > cfg.maxImageBytes) {
      showError(new ApiError(0, "Image too large", `${formatBytes(file.size)}; this server accepts up to ${formatBytes(cfg.maxImageBytes)}.`));
      return;
    }
    const reader = new FileReader();
    reader.onerror = () => showError(new ApiError(0, "Could not read the image", file.name));
    reader.onload = () => {
      clearUpload();
      uploaded = { dataUrl: String(reader.result), name: file.name || "pasted image", size: file.size, previewUrl: URL.createObjectURL(file) };
      els.previewImg.src = uploaded.previewUrl;
      els.previewText.textContent = `${uploaded.name} · ${formatBytes(file.size)}`;
      els.preview.hidden = false;
      els.imageUrl.value = "";
      els.imageUrl.disabled = true;
      els.dropzone.classList.add("has-image");
      updateSizeNote();
    };
    reader.readAsDataURL(file);
  }

  function setupImage() {
    els.imageFile.addEventListener("change", () => handleFile(els.imageFile.files[0]));
    els.imageClear.addEventListener("click", () => {
      clearUpload();
      els.imageFile.focus();
    });
    const zone = els.dropzone;
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (e) => {
        e.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      handleFile(file);
    });
    // A file dropped elsewhere on the page must not navigate away from it.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => {
      e.preventDefault();
      const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (file) handleFile(file);
    });
    document.addEventListener("paste", (e) => {
      const files = (e.clipboardData && e.clipboardData.files) || [];
      const file = Array.from(files).find((f) => IMAGE_TYPES.test(f.type));
      if (file) {
        e.preventDefault();
        handleFile(file);
      }
    });
  }

  /** "Output: W×H px" from the aspect ratio and megapixels (img2img keeps the source's size). */
  function updateSizeNote() {
    updatePromptStrength();
    const note = $("size-note");
    const ratio = $("f-aspect_ratio");
    if (!note || !ratio) return;
    if (uploaded || els.imageUrl.value.trim()) {
      note.textContent = "Output: the input image's size (at most 1440 px a side).";
      return;
    }
    let sizes = {};
    try {
      sizes = JSON.parse(ratio.dataset.sizes || "{}");
    } catch (_) {
      sizes = {};
    }
    const size = sizes[ratio.value];
    if (!size) {
      note.textContent = "";
      return;
    }
    const megapixels = $("f-megapixels");
    const half = megapixels && megapixels.value === "0.25";
    const [w, h2] = half ? [size[0] / 2, size[1] / 2] : size;
    note.textContent = `Output: ${w}×${h2} px`;
  }

  /** Prompt strength only means something with an input image: shown only when there is one. */
  function updatePromptStrength() {
    const field = document.querySelector(".field-prompt_strength");
    if (field) field.hidden = !(uploaded || els.imageUrl.value.trim());
  }

  function collectInput() {
    const input = {};
    for (const el of els.form.elements) {
      if (!el.name || el.type === "file" || el.name === "image") continue;
      const value = typeof el.value === "string" ? el.value.trim() : el.value;
      if (el.type === "checkbox") input[el.name] = el.checked;
      else if (el.dataset.nullable) input[el.name] = value === "" ? null : value; // a string keeps a 64-bit seed exact
      else if (el.dataset.kind === "integer" || el.dataset.kind === "number") input[el.name] = value === "" ? null : Number(value);
      else input[el.name] = el.value;
    }
    input.image = uploaded ? uploaded.dataUrl : els.imageUrl.value.trim() || null;
    return input;
  }

  /** A control back at the value the page was served with (the model's default). */
  function resetControl(el) {
    if (el.type === "checkbox") el.checked = el.defaultChecked;
    else if (el.tagName === "SELECT") {
      const option = [...el.options].find((o) => o.defaultSelected) || el.options[0];
      if (option) el.value = option.value;
    } else el.value = el.defaultValue;
  }

  /** Every field from ``input``; a field it lacks goes back to its default (the server used that). */
  function fillForm(input) {
    if (!input || typeof input !== "object") return;
    clearFieldErrors();
    for (const el of els.form.elements) {
      if (!el.name || el.type === "file") continue;
      if (!(el.name in input)) {
        if (el.name === "image") clearUpload();
        else resetControl(el);
        continue;
      }
      const value = input[el.name];
      if (el.name === "image") {
        clearUpload();
        if (typeof value === "string" && value.startsWith("data:image/")) {
          restoreUpload(value);
        } else {
          el.value = typeof value === "string" && /^https?:\/\//i.test(value) ? value : "";
        }
      } else if (el.type === "checkbox") {
        el.checked = value === true || value === "true";
      } else if (value !== null && value !== undefined) {
        el.value = String(value);
      } else if (el.dataset.nullable) {
        el.value = "";
      }
    }
    syncSliders();
    updateSizeNote();
  }

  /** An uploaded image (a data: URL in a reused input) shown as if it had just been picked. */
  function restoreUpload(dataUrl) {
    const type = dataUrl.slice(5, dataUrl.indexOf(";")) || "image";
    uploaded = { dataUrl, name: `the earlier input image (${type})`, size: Math.floor((dataUrl.length * 3) / 4), previewUrl: null };
    els.previewImg.src = dataUrl;
    els.previewText.textContent = uploaded.name;
    els.preview.hidden = false;
    els.imageUrl.value = "";
    els.imageUrl.disabled = true;
    els.dropzone.classList.add("has-image");
  }

  const CARRY_INPUT_STORAGE = "fluxserve.carryInput";

  /** "Reuse": every input of that prediction back in the form, with the seed it ran with (a
   * random seed is read from its logs). Another model's prediction opens that model's form. */
  function reuse(pred) {
    const input = { ...(pred.input && typeof pred.input === "object" ? pred.input : {}) };
    const seed = seedOf(pred);
    if (seed) input.seed = seed;
    const picker = $("model-select");
    if (pred.model && pred.model !== cfg.model && picker && [...picker.options].some((o) => o.value === pred.model)) {
      try {
        window.sessionStorage.setItem(CARRY_INPUT_STORAGE, JSON.stringify(input));
      } catch (_) {
        // storage disabled: the other model's form opens with its defaults
      }
      const target = new URL("./", window.location.href);
      target.searchParams.set("model", pred.model);
      window.location.assign(target.href);
      return;
    }
    fillForm(input);
    els.prompt.focus();
  }

  // -- one prediction --------------------------------------------------------------------------

  // Every prediction submitted from this page (or found running in the list) has a card in the
  // "Running" list until it ends; the Result panel shows the one in focus (the latest submitted,
  // or the one picked with "Show").
  const running = new Map(); // id -> {controller, card, parts, previewUrl, previewSrc}
  let focusId = null;

  function setStatus(text, state, progress) {
    els.statusText.replaceChildren();
    if (state) els.statusText.append(h("span", { class: `badge badge-${state}` }, state), " ");
    els.statusText.append(text);
    setBar(els.progress, progress);
  }

  /** undefined hides the bar, null makes it indeterminate, a number fills it. */
  function setBar(bar, progress) {
    if (progress === undefined) {
      bar.hidden = true;
    } else if (progress === null) {
      bar.hidden = false;
      bar.removeAttribute("value");
    } else {
      bar.hidden = false;
      bar.value = progress;
    }
  }

  function clearResults() {
    releaseBlobs(els.results);
    els.results.replaceChildren();
    els.resultMeta.replaceChildren();
    els.resultMeta.hidden = true;
    els.logsBox.hidden = true;
    els.logs.textContent = "";
  }

  function shareUrl(id) {
    return new URL(`p/${encodeURIComponent(id)}`, ROOT).href;
  }

  function copyButton(text) {
    if (!navigator.clipboard || !window.isSecureContext) return null;
    const button = h("button", { type: "button", class: "secondary small" }, "Copy link");
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch (_) {
        button.textContent = "Copy failed";
      }
      setTimeout(() => (button.textContent = "Copy link"), 1500);
    });
    return button;
  }

  /** "28 steps · guidance 3.5 · seed 42 · flux-dev · LoRA style (0.8)": what made the image. */
  function settingsText(pred) {
    const input = pred.input || {};
    const parts = [];
    const has = (v) => v !== undefined && v !== null && v !== "";
    if (has(input.num_inference_steps)) parts.push(`${input.num_inference_steps} steps`);
    if (has(input.guidance)) parts.push(`guidance ${input.guidance}`);
    const seed = seedOf(pred) || (has(input.seed) ? String(input.seed) : null);
    if (seed) parts.push(`seed ${seed}`);
    if (pred.model) parts.push(pred.model);
    for (const [source, scale] of [
      ["lora_weights", "lora_scale"],
      ["extra_lora", "extra_lora_scale"],
    ]) {
      if (typeof input[source] === "string" && input[source]) {
        const name = input[source].length > 60 ? input[source].slice(0, 57) + "…" : input[source];
        parts.push(`LoRA ${name}${has(input[scale]) ? ` (${input[scale]})` : ""}`);
      }
    }
    return parts.join(" · ");
  }

  function imageCard(pred, url, index, count) {
    const prompt = (pred.input && pred.input.prompt) || "";
    const img = h("img", { alt: `Image ${index + 1} of ${count}: ${prompt.slice(0, 200)}`, decoding: "async" });
    const open = h("a", { class: "thumb", href: "#", target: "_blank", rel: "noopener", title: "View full size" }, img);
    open.addEventListener("click", (e) => {
      if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey || !img.src) return;
      e.preventDefault(); // a plain click opens the lightbox; a modified one still opens a tab
      const shown = [...els.results.querySelectorAll("a.thumb img")].filter((i) => i.src);
      openLightbox(shown, shown.indexOf(img));
    });
    const download = h("a", { class: "button small", href: "#", download: downloadName(prompt, pred.id, index, count, url) }, "Download");
    const size = h("span", { class: "caption-size" });
    const settings = h("p", { class: "caption-settings" }, size, settingsText(pred));
    const caption = h(
      "figcaption",
      { class: "result-caption" },
      h("p", { class: "caption-prompt", title: prompt }, prompt),
      settings,
      h("div", { class: "caption-actions" }, h("span", { class: "muted" }, `${index + 1}/${count}`), download),
    );
    img.addEventListener("load", () => (size.textContent = `${img.naturalWidth}×${img.naturalHeight} px · `));
    imageSource(url)
      .then((src) => {
        img.src = src;
        open.href = src;
        download.href = src;
      })
      .catch((err) => caption.append(h("span", { class: "field-error" }, err.message)));
    return h("li", {}, h("figure", {}, open, caption));
  }

  function reuseSeed(seed) {
    const box = $("f-seed");
    if (!box) return;
    box.value = seed;
    box.focus();
  }

  function renderMeta(pred) {
    const items = [];
    const seed = seedOf(pred);
    if (seed) {
      items.push(
        h("span", {}, "Seed ", h("code", {}, seed)),
        h("button", { type: "button", class: "secondary small", onclick: () => reuseSeed(seed) }, "Reuse seed"),
      );
    }
    items.push(h("button", { type: "button", class: "secondary small", id: "result-reuse", onclick: () => reuse(pred) }, "Reuse all settings"));
    if (pred.metrics && typeof pred.metrics.predict_time === "number") items.push(h("span", {}, `${pred.metrics.predict_time.toFixed(2)} s`));
    if (cfg.share && pred.status === "success") {
      const link = shareUrl(pred.id);
      items.push(h("a", { class: "share-link", href: link, target: "_blank", rel: "noopener" }, "Share page"), copyButton(link));
    }
    els.resultMeta.replaceChildren(...items.filter(Boolean));
    els.resultMeta.hidden = items.length === 0;
  }

  /** The step counts of a running prediction: the `progress` field where the server gives one,
   * else the "n/N steps (p%)" lines of its logs. */
  function stepsOf(pred) {
    const p = pred.progress;
    if (p && typeof p.step === "number" && typeof p.total_steps === "number") {
      const percent = typeof p.percent === "number" ? p.percent : p.total_steps ? Math.floor((100 * p.step) / p.total_steps) : 0;
      return { done: p.step, total: p.total_steps, percent };
    }
    return progressOf(pred.logs);
  }

  function queueText(pred) {
    const position = pred.progress && pred.progress.queue_position;
    if (typeof position !== "number") return "Queued: waiting for a free worker…";
    return position === 0 ? "Queued: next in line" : `Queued: ${position} ahead in the queue`;
  }

  function formatSeconds(s) {
    if (s < 60) return `${Math.round(s)} s`;
    return `${Math.floor(s / 60)} min ${String(Math.round(s % 60)).padStart(2, "0")} s`;
  }

  /** "12 s elapsed · about 30 s left", from `progress` (the elapsed time also from started_at). */
  function timesText(pred) {
    const p = pred.progress || {};
    const parts = [];
    let elapsed = typeof p.elapsed_s === "number" ? p.elapsed_s : null;
    if (elapsed === null && pred.status === "processing" && pred.started_at) {
      const started = Date.parse(pred.started_at);
      if (!Number.isNaN(started)) elapsed = Math.max(0, (Date.now() - started) / 1000);
    }
    if (elapsed !== null) parts.push(`${formatSeconds(elapsed)} elapsed`);
    if (typeof p.eta_s === "number") parts.push(`about ${formatSeconds(p.eta_s)} left`);
    return parts.join(" · ");
  }

  function renderPrediction(pred) {
    const progress = stepsOf(pred);
    const images = outputList(pred);
    switch (pred.status) {
      case "starting":
        setStatus(queueText(pred), "starting", null);
        break;
      case "processing":
        if (progress) setStatus(`Generating: ${progress.done}/${progress.total} steps (${progress.percent}%)`, "processing", progress.percent);
        else setStatus("Preparing the run…", "processing", null);
        break;
      case "success":
        setStatus(`Done: ${images.length} image${images.length === 1 ? "" : "s"}.`, "success");
        break;
      case "error":
        setStatus("The prediction failed.", "error");
        showError(new ApiError(0, pred.error || "The prediction failed"), "The prediction failed");
        break;
      case "cancelled":
        setStatus("Cancelled: no images were kept.", "cancelled");
        break;
      default:
        setStatus(pred.status || "unknown", null);
    }
    if (pred.logs) {
      els.logs.textContent = pred.logs;
      els.logsBox.hidden = false;
    }
    if (TERMINAL.has(pred.status)) {
      renderMeta(pred);
      if (els.results.childElementCount !== images.length) {
        releaseBlobs(els.results);
        els.results.replaceChildren(...images.map((url, i) => imageCard(pred, url, i, images.length)));
      }
      if (pred.data_removed) els.results.replaceChildren(h("li", { class: "muted" }, "The images were removed by the retention policy."));
    }
  }

  // -- the running list ------------------------------------------------------------------------

  function runningCard(id, prompt) {
    const short = prompt.slice(0, 80);
    const parts = {
      preview: h("img", { class: "run-preview-img", alt: `Preview of: ${short}`, hidden: true }),
      status: h("p", { class: "run-status" }, "Queued…"),
      bar: h("progress", { class: "run-progress", max: "100", "aria-label": `Progress of: ${short}` }),
      times: h("p", { class: "run-times muted" }),
      // Named by their text alone, described by the card's prompt (a prompt never renames them).
      cancel: h("button", { type: "button", class: "danger small run-cancel", "aria-describedby": `run-prompt-${id}` }, "Cancel"),
      show: h("button", { type: "button", class: "secondary small run-show", "aria-describedby": `run-prompt-${id}` }, "Show"),
    };
    parts.bar.removeAttribute("value");
    const card = h(
      "li",
      { class: "run-card", "data-id": id, "aria-live": "polite" },
      h("div", { class: "run-preview", "aria-hidden": parts.preview.hidden ? "true" : null }, parts.preview),
      h(
        "div",
        { class: "run-body" },
        h("p", { class: "run-prompt", id: `run-prompt-${id}`, title: prompt }, prompt || "(no prompt)"),
        parts.status,
        parts.bar,
        parts.times,
        h("div", { class: "run-actions" }, parts.show, parts.cancel),
      ),
    );
    return { card, parts };
  }

  function updateCard(entry, pred) {
    const { parts } = entry;
    const steps = stepsOf(pred);
    if (pred.status === "starting") {
      parts.status.textContent = queueText(pred);
      setBar(parts.bar, null);
    } else if (pred.status === "processing") {
      parts.status.textContent = steps ? `Generating: ${steps.done}/${steps.total} steps (${steps.percent}%)` : "Preparing the run…";
      setBar(parts.bar, steps ? steps.percent : null);
    } else {
      parts.status.textContent = pred.status;
    }
    parts.times.textContent = timesText(pred);
    const url = pred.progress && typeof pred.progress.preview_url === "string" ? pred.progress.preview_url : null;
    if (url && url !== entry.previewUrl) {
      entry.previewUrl = url;
      keyedBlob(url)
        .then((src) => {
          if (!running.has(pred.id)) return URL.revokeObjectURL(src);
          if (entry.previewSrc) URL.revokeObjectURL(entry.previewSrc);
          entry.previewSrc = src;
          parts.preview.src = src;
          parts.preview.hidden = false;
        })
        .catch(() => {}); // none yet (404), or gone: the next poll tries the next one
    }
  }

  function track(id, prompt) {
    if (running.has(id)) return running.get(id);
    const { card, parts } = runningCard(id, prompt);
    const entry = { controller: new AbortController(), card, parts, previewUrl: null, previewSrc: null };
    parts.cancel.addEventListener("click", () => cancelRun(id));
    parts.show.addEventListener("click", () => focusOn(id));
    running.set(id, entry);
    els.running.prepend(card);
    els.runningBox.hidden = false;
    follow(id, entry);
    return entry;
  }

  function untrack(id) {
    const entry = running.get(id);
    if (!entry) return;
    running.delete(id);
    entry.controller.abort();
    if (entry.previewSrc) URL.revokeObjectURL(entry.previewSrc);
    entry.card.remove();
    els.runningBox.hidden = running.size === 0;
  }

  /** Show a tracked prediction in the Result panel. */
  function focusOn(id) {
    focusId = id;
    clearError();
    clearResults();
    setStatus("Queued…", "starting", null);
    const entry = running.get(id);
    if (entry && entry.pred) renderPrediction(entry.pred);
    els.resultTitle.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  async function follow(id, entry) {
    const { signal } = entry.controller;
    let failures = 0;
    try {
      for (;;) {
        let pred;
        try {
          pred = await api(`v1/prediction/${encodeURIComponent(id)}?wait=${POLL_WAIT_S}`, { signal });
          failures = 0;
        } catch (err) {
          if (err.name === "AbortError") return;
          if (err.status === 0 && failures < 5) {
            failures += 1;
            entry.parts.status.textContent = `Connection lost; retrying (${failures}/5)…`;
            if (focusId === id) setStatus(`Connection lost; retrying (${failures}/5)…`, null, null);
            await sleep(1000 * failures);
            continue;
          }
          if (err.status === 429) {
            await sleep(1000 * (Number(err.retryAfter) || 2));
            continue;
          }
          throw err;
        }
        if (signal.aborted) return;
        entry.pred = pred;
        updateCard(entry, pred);
        if (focusId === id) renderPrediction(pred);
        if (TERMINAL.has(pred.status)) break;
      }
    } catch (err) {
      if (focusId === id) setStatus("Lost track of the prediction.", null);
      showError(err);
    } finally {
      if (!signal.aborted) {
        untrack(id);
        loadHistory(true);
        refreshModelInfo();
        refreshHealth();
      }
    }
  }

  async function cancelRun(id) {
    const entry = running.get(id);
    if (!entry) return;
    entry.parts.cancel.disabled = true;
    entry.parts.status.textContent = "Cancelling…";
    if (focusId === id) setStatus("Cancelling…", null, null);
    try {
      await api(`v1/prediction/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    } catch (err) {
      if (err.status !== 409) {
        entry.parts.cancel.disabled = false;
        showError(err, "Could not cancel"); // 409: it finished first
      }
    }
    // Its follow loop sees the final status.
  }

  /** The form's own checks, answered in the same error box as the server's. */
  function formProblems() {
    const problems = {};
    for (const el of els.form.elements) {
      if (!el.name || el.type === "file" || el.disabled || el.closest("[hidden]")) continue;
      if (!el.checkValidity()) problems[el.name] = el.validationMessage || "invalid";
    }
    return problems;
  }

  async function onSubmit(e) {
    e.preventDefault();
    clearError();
    if (!cfg.open && !apiKey()) {
      showError(new ApiError(0, "Enter your API key first", "The key goes in the field at the top of the form."));
      els.key.focus();
      return;
    }
    const problems = formProblems();
    if (Object.keys(problems).length) {
      showError(new ApiError(0, "Check the form", problems));
      return;
    }
    const input = collectInput();
    let created;
    try {
      created = await api("v1/prediction", { method: "POST", body: { model: cfg.model, input, previews: true } });
    } catch (err) {
      if (!focusId || !running.has(focusId)) setStatus("The prediction was not created.", null);
      showError(err);
      return;
    }
    const id = created.predictionID;
    focusId = id;
    clearResults();
    setStatus("Queued…", "starting", null);
    const entry = track(id, typeof input.prompt === "string" ? input.prompt : "");
    // On a phone the list is below the form: bring the new card (and its progress) into view.
    entry.card.scrollIntoView({ block: "center", behavior: "smooth" });
  }

  function showPrediction(pred) {
    clearError();
    if (!TERMINAL.has(pred.status)) {
      track(pred.id, (pred.input && typeof pred.input.prompt === "string" && pred.input.prompt) || "");
      focusOn(pred.id);
      return;
    }
    focusId = pred.id;
    clearResults();
    renderPrediction(pred);
    els.resultTitle.scrollIntoView({ block: "start", behavior: "smooth" });
    els.resultTitle.focus({ preventScroll: true });
  }

  // -- the lightbox ----------------------------------------------------------------------------

  let lightboxImages = [];
  let lightboxIndex = 0;

  function showLightboxImage(index) {
    const count = lightboxImages.length;
    if (!count) return;
    lightboxIndex = (index + count) % count;
    const source = lightboxImages[lightboxIndex];
    els.lightboxImg.src = source.src;
    els.lightboxImg.alt = source.alt;
    els.lightboxCaption.textContent = count > 1 ? `${lightboxIndex + 1} of ${count} · ${source.alt}` : source.alt;
  }

  function openLightbox(images, index) {
    lightboxImages = images;
    showLightboxImage(Math.max(0, index));
    if (!els.lightbox.open) els.lightbox.showModal();
  }

  function setupLightbox() {
    const box = els.lightbox;
    box.addEventListener("click", () => box.close()); // the image or around it: a click closes
    document.addEventListener("keydown", (e) => {
      if (!box.open) return;
      if (e.key === "ArrowRight") showLightboxImage(lightboxIndex + 1);
      else if (e.key === "ArrowLeft") showLightboxImage(lightboxIndex - 1);
      else return;
      e.preventDefault();
    });
    box.addEventListener("close", () => els.lightboxImg.removeAttribute("src"));
  }

  // -- history ---------------------------------------------------------------------------------

  let historyOffset = 0;
  let historyTotal = 0;
  let historyToken = 0;
  const SEARCH_DELAY_MS = 300;

  function historyQuery() {
    return els.historySearch.value.trim();
  }

  function updateHistoryCount() {
    els.historyCount.hidden = historyTotal === 0;
    els.historyCount.textContent = `Showing ${historyOffset} of ${historyTotal}`;
    els.historyMore.hidden = historyOffset >= historyTotal;
    els.historyEmpty.hidden = historyTotal > 0;
    const q = historyQuery();
    els.historyEmpty.textContent = q ? `No predictions match “${q}”.` : "No predictions yet.";
  }

  /** Delete asks once more on the button itself (no dialog), then removes the prediction. */
  function deleteButton(pred, item) {
    const button = h("button", { type: "button", class: "secondary small history-delete", "aria-describedby": `history-prompt-${pred.id}` }, "Delete");
    let disarm = null;
    button.addEventListener("click", async () => {
      if (button.dataset.armed !== "1") {
        button.dataset.armed = "1";
        button.textContent = "Confirm delete";
        disarm = setTimeout(() => {
          button.dataset.armed = "";
          button.textContent = "Delete";
        }, 5000);
        return;
      }
      clearTimeout(disarm);
      button.disabled = true;
      try {
        await api(`v1/prediction/${encodeURIComponent(pred.id)}`, { method: "DELETE" });
      } catch (err) {
        button.disabled = false;
        showError(err, "Could not delete");
        return;
      }
      releaseBlobs(item);
      item.remove();
      historyOffset = Math.max(0, historyOffset - 1);
      historyTotal = Math.max(0, historyTotal - 1);
      updateHistoryCount();
      if (focusId === pred.id) {
        focusId = null;
        clearResults();
        setStatus("Deleted.", null);
      }
    });
    return button;
  }

  function historyItem(pred) {
    const prompt = (pred.input && typeof pred.input.prompt === "string" && pred.input.prompt) || "(no prompt)";
    const images = outputList(pred);
    const thumb = h("div", { class: "history-thumb", "aria-hidden": "true" });
    if (images.length) {
      const img = h("img", { alt: "", loading: "lazy", decoding: "async" });
      imageSource(images[0])
        .then((src) => (img.src = src))
        .catch(() => img.remove());
      thumb.append(img);
    }
    const when = h("time", { datetime: pred.created_at, title: pred.created_at ? new Date(pred.created_at).toLocaleString() : "" }, timeAgo(pred.created_at));
    const meta = h(
      "p",
      { class: "history-meta" },
      h("span", { class: `badge badge-${pred.status}` }, pred.status),
      " ",
      when,
      images.length ? ` · ${images.length} image${images.length === 1 ? "" : "s"}` : "",
    );
    const actions = h(
      "div",
      { class: "history-actions" },
      h("button", { type: "button", class: "secondary small", onclick: () => showPrediction(pred), "aria-label": `Show the result of: ${prompt.slice(0, 80)}` }, "Show"),
      h(
        "button",
        {
          type: "button",
          class: "secondary small",
          "aria-label": `Reuse the settings of: ${prompt.slice(0, 80)}`,
          onclick: () => reuse(pred),
        },
        "Reuse",
      ),
      cfg.share && pred.status === "success" ? h("a", { class: "button secondary small", href: shareUrl(pred.id), target: "_blank", rel: "noopener" }, "Share") : null,
    );
    const item = h("li", { class: "history-item", "data-id": pred.id }, thumb, h("div", { class: "history-body" }, h("p", { class: "history-prompt", id: `history-prompt-${pred.id}`, title: prompt }, prompt), meta, actions));
    if (TERMINAL.has(pred.status)) actions.append(deleteButton(pred, item));
    return item;
  }

  async function loadHistory(reset) {
    if (!cfg.open && !apiKey()) return;
    const token = ++historyToken;
    const offset = reset ? 0 : historyOffset;
    const q = historyQuery();
    let data;
    try {
      data = await api(`v1/executions?limit=${HISTORY_PAGE}&offset=${offset}${q ? `&q=${encodeURIComponent(q)}` : ""}`);
    } catch (err) {
      if (token !== historyToken) return;
      if (err.status === 401) {
        els.historyEmpty.textContent = apiKey() ? "The server refused this API key." : "Enter your API key to see your recent predictions.";
      } else {
        els.historyEmpty.textContent = `Could not load the list: ${err.message}`;
      }
      els.historyEmpty.hidden = false;
      if (reset) els.history.replaceChildren();
      els.historyMore.hidden = true;
      els.historyCount.hidden = true;
      return;
    }
    if (token !== historyToken) return;
    if (reset) {
      releaseBlobs(els.history);
      els.history.replaceChildren();
    }
    const executions = data.executions || [];
    els.history.append(...executions.map(historyItem));
    historyOffset = offset + executions.length;
    historyTotal = data.total || 0;
    updateHistoryCount();
    // Predictions still running (from another tab, or before a reload) get a card too.
    for (const pred of executions) {
      if (!TERMINAL.has(pred.status) && !running.has(pred.id)) track(pred.id, (pred.input && typeof pred.input.prompt === "string" && pred.input.prompt) || "");
    }
  }

  function setupHistory() {
    let timer = null;
    els.historySearch.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => loadHistory(true), SEARCH_DELAY_MS);
    });
    els.historySearch.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        clearTimeout(timer);
        loadHistory(true);
      }
    });
    els.historyRefresh.addEventListener("click", () => loadHistory(true));
    els.historyMore.addEventListener("click", () => loadHistory(false));
  }

  // -- server state ----------------------------------------------------------------------------

  function showWarning(text) {
    if (!text) return;
    els.warning.replaceChildren(h("strong", {}, "Demo model. "), text);
    els.warning.hidden = false;
  }

  const SERVER_STATES = {
    READY: "Ready",
    BUSY: "Busy: every worker is generating",
    STARTING: "Loading the model…",
    SETUP_FAILED: "The model failed to load",
    SHUTTING_DOWN: "Shutting down",
  };

  let healthTimer = null;

  async function refreshHealth() {
    let state = "UNREACHABLE";
    try {
      const response = await fetch(new URL("health-check", ROOT), { cache: "no-store", credentials: "omit" });
      const data = await response.json();
      state = data.status || "UNKNOWN";
      let text = SERVER_STATES[state] || state;
      if (state === "SETUP_FAILED" && data.reason) text += `: ${data.reason}`;
      if (typeof data.queue_depth === "number" && data.queue_depth > 0) text += ` · ${data.queue_depth} queued`;
      els.serverStatusText.textContent = text;
      showWarning(data.warning);
      if (data.auth === "keys") becameKeyed();
    } catch (_) {
      els.serverStatusText.textContent = "Server unreachable";
    }
    els.serverStatus.dataset.state = state;
    clearTimeout(healthTimer);
    if (state === "STARTING" || state === "UNREACHABLE") healthTimer = setTimeout(refreshHealth, 3000);
  }

  async function refreshModelInfo() {
    if (!cfg.open && !apiKey()) return;
    try {
      const data = await api("v1/models");
      const model = (data.models || []).find((m) => m.slug === cfg.model) || (data.models || [])[0];
      if (model && model.warning) showWarning(model.warning);
    } catch (_) {
      // a refused key is reported by the history list
    }
  }

  // -- several models ----------------------------------------------------------------------------

  const CARRY_STORAGE = "fluxserve.carryPrompt";

  /** The model menu loads the page for that model's form; the prompt comes along. */
  function setupModelPicker() {
    const picker = $("model-select");
    let session = null;
    try {
      session = window.sessionStorage;
    } catch (_) {
      // storage disabled: the prompt is not carried over
    }
    const carried = session ? session.getItem(CARRY_STORAGE) : null;
    if (carried !== null) {
      session.removeItem(CARRY_STORAGE);
      if (!els.prompt.value) els.prompt.value = carried;
    }
    if (!picker) return;
    picker.addEventListener("change", () => {
      if (session) session.setItem(CARRY_STORAGE, els.prompt.value);
      const target = new URL("./", window.location.href);
      target.searchParams.set("model", picker.value);
      window.location.assign(target.href);
    });
  }

  /** Reuse of another model's prediction: its inputs, carried over the page load. */
  function applyCarriedInput() {
    let carried = null;
    try {
      carried = window.sessionStorage.getItem(CARRY_INPUT_STORAGE);
      window.sessionStorage.removeItem(CARRY_INPUT_STORAGE);
    } catch (_) {
      return;
    }
    if (!carried) return;
    try {
      fillForm(JSON.parse(carried));
    } catch (_) {
      // not ours: ignored
    }
  }

  const ADVANCED_STORAGE = "fluxserve.advancedOpen";

  /** The folded settings stay open (or closed) across visits. */
  function setupAdvanced() {
    const box = els.advanced;
    if (!box) return;
    const s = storage();
    if (s && s.getItem(ADVANCED_STORAGE) === "1") box.open = true;
    box.addEventListener("toggle", () => {
      if (s) s.setItem(ADVANCED_STORAGE, box.open ? "1" : "0");
    });
  }

  // -- wiring ----------------------------------------------------------------------------------

  function init() {
    setupModelPicker();
    setupKey();
    setupSliders();
    setupImage();
    els.resultTitle.tabIndex = -1;
    els.form.addEventListener("submit", onSubmit);
    els.form.addEventListener("reset", () => {
      clearUpload();
      clearError();
      setTimeout(() => {
        syncSliders();
        updateSizeNote();
      }, 0);
    });
    els.form.addEventListener("change", updateSizeNote);
    els.imageUrl.addEventListener("input", updateSizeNote);
    updateSizeNote();
    els.form.addEventListener("input", (e) => {
      if (e.target && e.target.getAttribute("aria-invalid")) {
        e.target.removeAttribute("aria-invalid");
        const slot = $(`error-${(e.target.name || "").replace(/^input\./, "")}`);
        if (slot) slot.hidden = true;
      }
    });
    els.prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        els.form.requestSubmit();
      }
    });
    setupHistory();
    setupLightbox();
    setupAdvanced();
    applyCarriedInput();
    if (!cfg.open && !apiKey()) {
      els.historyEmpty.textContent = "Enter your API key to see your recent predictions.";
    } else {
      els.historyEmpty.textContent = "Loading…";
    }
    refreshHealth();
    refreshModelInfo();
    loadHistory(true);
    body.classList.add("ready");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
