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
    cancel: $("cancel"),
    error: $("error"),
    statusText: $("status-text"),
    progress: $("progress"),
    resultMeta: $("result-meta"),
    results: $("results"),
    resultTitle: $("result-title"),
    logsBox: $("logs-box"),
    logs: $("logs"),
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

  /** Output URLs are absolute (the server's public URL); fetch them from this page's origin. */
  function localUrl(url) {
    try {
      const parsed = new URL(url, ROOT);
      const at = parsed.pathname.indexOf("/v1/outputs/");
      return at >= 0 ? new URL(parsed.pathname.slice(at + 1), ROOT).href : parsed.href;
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
    const local = localUrl(url);
    if (!cfg.ownerImages) return local;
    const headers = {};
    if (apiKey()) headers["X-API-Key"] = apiKey();
    const response = await fetch(local, { headers, credentials: "omit" });
    if (!response.ok) throw new ApiError(response.status, "Image not available");
    const blobUrl = URL.createObjectURL(await response.blob());
    blobUrls.add(blobUrl);
    return blobUrl;
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

  function fillForm(input) {
    if (!input || typeof input !== "object") return;
    clearFieldErrors();
    for (const el of els.form.elements) {
      if (!el.name || el.type === "file" || !(el.name in input)) continue;
      const value = input[el.name];
      if (el.name === "image") {
        clearUpload();
        el.value = typeof value === "string" && /^https?:\/\//i.test(value) ? value : "";
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

  // -- one prediction --------------------------------------------------------------------------

  let current = null; // {id, controller}

  function setBusy(busy) {
    els.generate.disabled = busy;
    els.generate.textContent = busy ? "Generating…" : "Generate";
    els.cancel.disabled = !busy || !current;
    els.form.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function setStatus(text, state, progress) {
    els.statusText.replaceChildren();
    if (state) els.statusText.append(h("span", { class: `badge badge-${state}` }, state), " ");
    els.statusText.append(text);
    if (progress === undefined) {
      els.progress.hidden = true;
    } else if (progress === null) {
      els.progress.hidden = false;
      els.progress.removeAttribute("value"); // indeterminate
    } else {
      els.progress.hidden = false;
      els.progress.value = progress;
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

  function imageCard(pred, url, index, count) {
    const prompt = (pred.input && pred.input.prompt) || "";
    const img = h("img", { alt: `Image ${index + 1} of ${count}: ${prompt.slice(0, 200)}`, decoding: "async" });
    const open = h("a", { class: "thumb", href: "#", target: "_blank", rel: "noopener" }, img);
    const download = h("a", { class: "button small", href: "#", download: downloadName(prompt, pred.id, index, count, url) }, "Download");
    const caption = h("figcaption", {}, h("span", { class: "muted" }, `${index + 1}/${count}`), download);
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
    if (pred.metrics && typeof pred.metrics.predict_time === "number") items.push(h("span", {}, `${pred.metrics.predict_time.toFixed(2)} s`));
    if (cfg.share && pred.status === "success") {
      const link = shareUrl(pred.id);
      items.push(h("a", { class: "share-link", href: link, target: "_blank", rel: "noopener" }, "Share page"), copyButton(link));
    }
    els.resultMeta.replaceChildren(...items.filter(Boolean));
    els.resultMeta.hidden = items.length === 0;
  }

  function renderPrediction(pred) {
    const progress = progressOf(pred.logs);
    const images = outputList(pred);
    switch (pred.status) {
      case "starting":
        setStatus("Queued: waiting for a free worker…", "starting", null);
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

  async function follow(id) {
    if (current) current.controller.abort();
    const controller = new AbortController();
    current = { id, controller };
    clearResults();
    setBusy(true);
    setStatus("Queued…", "starting", null);
    let failures = 0;
    try {
      for (;;) {
        let pred;
        try {
          pred = await api(`v1/prediction/${encodeURIComponent(id)}?wait=${POLL_WAIT_S}`, { signal: controller.signal });
          failures = 0;
        } catch (err) {
          if (err.name === "AbortError") return;
          if (err.status === 0 && failures < 5) {
            failures += 1;
            setStatus(`Connection lost; retrying (${failures}/5)…`, null, null);
            await sleep(1000 * failures);
            continue;
          }
          if (err.status === 429) {
            await sleep(1000 * (Number(err.retryAfter) || 2));
            continue;
          }
          throw err;
        }
        if (controller.signal.aborted) return;
        renderPrediction(pred);
        if (TERMINAL.has(pred.status)) break;
      }
    } catch (err) {
      setStatus("Lost track of the prediction.", null);
      showError(err);
    } finally {
      if (current && current.id === id) {
        current = null;
        setBusy(false);
        loadHistory(true);
        refreshModelInfo();
        refreshHealth();
      }
    }
  }

  async function onSubmit(e) {
    e.preventDefault();
    if (current) return;
    clearError();
    if (!cfg.open && !apiKey()) {
      showError(new ApiError(0, "Enter your API key first", "The key goes in the field at the top of the form."));
      els.key.focus();
      return;
    }
    const input = collectInput();
    els.generate.disabled = true;
    setStatus("Submitting…", null, null);
    let created;
    try {
      created = await api("v1/prediction", { method: "POST", body: { model: cfg.model, input } });
    } catch (err) {
      els.generate.disabled = false;
      setStatus("The prediction was not created.", null);
      showError(err);
      return;
    }
    els.resultTitle.scrollIntoView({ block: "nearest", behavior: "smooth" });
    await follow(created.predictionID);
  }

  async function onCancel() {
    if (!current) return;
    const { id } = current;
    els.cancel.disabled = true;
    setStatus("Cancelling…", null, null);
    try {
      await api(`v1/prediction/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    } catch (err) {
      if (err.status !== 409) showError(err, "Could not cancel"); // 409: it finished first
    }
    // The follow loop sees the final status.
  }

  function showPrediction(pred) {
    clearError();
    if (!TERMINAL.has(pred.status)) {
      if (!current || current.id !== pred.id) follow(pred.id);
    } else {
      if (current) return; // keep following the running one
      clearResults();
      renderPrediction(pred);
    }
    els.resultTitle.scrollIntoView({ block: "start", behavior: "smooth" });
    els.resultTitle.focus({ preventScroll: true });
  }

  // -- history ---------------------------------------------------------------------------------

  let historyOffset = 0;
  let historyToken = 0;

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
          onclick: () => {
            fillForm(pred.input);
            els.prompt.focus();
          },
        },
        "Reuse",
      ),
      cfg.share && pred.status === "success" ? h("a", { class: "button secondary small", href: shareUrl(pred.id), target: "_blank", rel: "noopener" }, "Share") : null,
    );
    return h("li", { class: "history-item" }, thumb, h("div", { class: "history-body" }, h("p", { class: "history-prompt", title: prompt }, prompt), meta, actions));
  }

  async function loadHistory(reset) {
    if (!cfg.open && !apiKey()) return;
    const token = ++historyToken;
    const offset = reset ? 0 : historyOffset;
    let data;
    try {
      data = await api(`v1/executions?limit=${HISTORY_PAGE}&offset=${offset}`);
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
    els.historyMore.hidden = historyOffset >= (data.total || 0);
    els.historyEmpty.hidden = (data.total || 0) > 0;
    els.historyEmpty.textContent = "No predictions yet.";
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
    els.cancel.addEventListener("click", onCancel);
    els.prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        els.form.requestSubmit();
      }
    });
    els.historyRefresh.addEventListener("click", () => loadHistory(true));
    els.historyMore.addEventListener("click", () => loadHistory(false));
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
