// Uploading a clip (POST /api/v1/clips, multipart) with its progress shown: the clip library
// and the composer's clip picker both use `uploader()`. XMLHttpRequest, not fetch: fetch
// reports no upload progress. The bearer token goes in the header as for every call. The
// API's refusal (413 too large, 400 not audio) lands next to the file field; a file over the
// API's size limit is refused here before a byte is sent.

import { API, ApiError, authHeaders, session } from "./api.js";
import { h } from "./dom.js";
import { formatNumber, t } from "./i18n.js";
import { fieldErrors, showError } from "./ui.js";

/** The API's cap (streamer/control/api/clips.py MAX_CLIP_BYTES). */
export const MAX_CLIP_BYTES = 64 * 1024 * 1024;

/**
 * Send `file` (with the optional `name`) to POST /clips. `onProgress(fraction)` follows the
 * upload (0…1); `onSent()` once the last byte is out (the streamer then decodes it).
 * Returns {done: Promise<ClipMeta>, abort()}; an abort rejects `done` with {aborted: true}.
 */
export function sendClip(file, name, { onProgress, onSent } = {}) {
  const xhr = new XMLHttpRequest();
  const done = new Promise((resolve, reject) => {
    xhr.open("POST", `${API}/clips`);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total);
    });
    xhr.upload.addEventListener("load", () => {
      if (onProgress) onProgress(1);
      if (onSent) onSent();
    });
    xhr.addEventListener("load", () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(data);
        return;
      }
      const err = new ApiError(xhr.status, (data && data.error) || `HTTP ${xhr.status}`,
                               (data && data.field) || "file");
      if (xhr.status === 401 && session.onSignedOut) session.onSignedOut(err);
      reject(err);
    });
    xhr.addEventListener("error", () => reject(new Error(t("upload.network_error"))));
    xhr.addEventListener("abort", () => reject(Object.assign(new Error("aborted"), { aborted: true })));
    const body = new FormData();
    body.append("file", file);
    if (name) body.append("name", name);
    xhr.send(body);
  });
  return { done, abort: () => xhr.abort() };
}

/**
 * The upload form: a file field, a label, the upload and cancel buttons, a progress bar with
 * its percentage. Not a <form> (the composer holds it inside its own): Enter in its fields
 * uploads. `prefix` names its element ids and test ids (`<prefix>-file`, `-name`, `-send`,
 * `-cancel`, `-progress`, `-percent`, `-file-error`); `onUploaded(clip)` follows a success.
 */
export function uploader(prefix, onUploaded) {
  let sending = null;
  const fileInput = h("input", {
    type: "file", id: `${prefix}-file`, "data-testid": `${prefix}-file`, accept: "audio/*,video/*",
    "aria-describedby": `${prefix}-file-hint ${prefix}-file-error`,
  });
  const nameInput = h("input", {
    id: `${prefix}-name`, "data-testid": `${prefix}-name`, maxlength: 200,
    "aria-describedby": `${prefix}-name-error`,
  });
  const bar = h("progress", {
    id: `${prefix}-progress`, "data-testid": `${prefix}-progress`, max: 100, value: 0,
    "aria-labelledby": `${prefix}-progress-label`, "data-value": "0", "aria-valuenow": "0",
    "aria-valuemin": "0", "aria-valuemax": "100",
  });
  const percent = h("span", { id: `${prefix}-percent`, "data-testid": `${prefix}-percent`, role: "status", "data-state": "idle" });
  const progress = h("div", { class: "upload-progress", hidden: true },
    h("span", { id: `${prefix}-progress-label`, class: "visually-hidden", text: t("upload.progress") }), bar, percent);
  const send = h("button", { type: "button", class: "primary", "data-testid": `${prefix}-send`, text: t("upload.send") });
  const cancel = h("button", { type: "button", "data-testid": `${prefix}-cancel`, hidden: true, text: t("upload.cancel") });
  const box = h("div", { class: "uploader", role: "group", "aria-labelledby": `${prefix}-title`, "data-testid": prefix },
    h("h2", { id: `${prefix}-title`, class: "uploader-title", text: t("upload.title") }),
    h("div", { class: "field" },
      h("label", { for: `${prefix}-file`, text: t("upload.file") }),
      h("p", { class: "hint", id: `${prefix}-file-hint`, text: t("upload.file_hint") }),
      fileInput,
      h("p", { class: "field-error", id: `${prefix}-file-error`, "data-error-for": "file", "data-testid": `${prefix}-file-error` })),
    h("div", { class: "field" },
      h("label", { for: `${prefix}-name`, text: t("upload.name") }),
      nameInput,
      h("p", { class: "field-error", id: `${prefix}-name-error`, "data-error-for": "name" })),
    h("div", { class: "actions" }, send, cancel),
    progress);

  const show = (fraction, state) => {
    const pct = Math.round(fraction * 100);
    bar.value = pct;
    bar.setAttribute("aria-valuenow", String(pct));
    bar.dataset.value = String(pct);
    percent.dataset.state = state;
    percent.textContent = state === "sending" ? t("upload.percent", { pct: formatNumber(pct) }) : t(`upload.${state}`);
  };
  const busy = (on) => {
    send.disabled = on;
    fileInput.disabled = on;
    nameInput.disabled = on;
    cancel.hidden = !on;
  };

  const start = async () => {
    if (sending) return;
    fieldErrors(box, null);
    showError(null);
    const file = fileInput.files && fileInput.files[0];
    if (!file) {
      fieldErrors(box, { file: t("upload.need_file") });
      return;
    }
    if (file.size > MAX_CLIP_BYTES) {
      fieldErrors(box, { file: t("upload.too_big", { mb: formatNumber(MAX_CLIP_BYTES / 1048576) }) });
      return;
    }
    progress.hidden = false;
    show(0, "sending");
    busy(true);
    sending = sendClip(file, nameInput.value.trim() || file.name, {
      onProgress: (f) => show(f, "sending"),
      onSent: () => show(1, "decoding"),
    });
    try {
      const clip = await sending.done;
      show(1, "done");
      fileInput.value = "";
      nameInput.value = "";
      if (onUploaded) await onUploaded(clip);
    } catch (err) {
      if (err.aborted) {
        show(0, "cancelled");
      } else {
        show(bar.value / 100, "failed");
        if (!(err instanceof ApiError) || !fieldErrors(box, err)) {
          fieldErrors(box, { file: err.message });
        }
      }
    } finally {
      sending = null;
      busy(false);
    }
  };

  fileInput.addEventListener("change", () => {
    fieldErrors(box, null); // a new file: the last one's refusal no longer applies
    progress.hidden = true;
  });
  send.addEventListener("click", start);
  cancel.addEventListener("click", () => {
    if (sending) sending.abort();
  });
  for (const input of [fileInput, nameInput]) {
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        start();
      }
    });
  }
  return { element: box, abort: () => sending && sending.abort() };
}

/** "3:07" for 187.2 s. */
export function formatDuration(seconds) {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** "1,2 MB" (decimal megabytes, as a phone shows them). */
export function formatBytes(bytes) {
  if (bytes < 1e6) return t("upload.kb", { n: formatNumber(Math.max(1, Math.round(bytes / 1e3))) });
  return t("upload.mb", { n: formatNumber(Math.round(bytes / 1e5) / 10) });
}

/** Lower case without Vietnamese marks, for searching "thong bao" to find "Thông báo". */
export function fold(text) {
  return String(text || "").normalize("NFD").replace(/[\u0300-\u036f]/g, "").replace(/đ/g, "d").replace(/Đ/g, "d").toLowerCase();
}
