// The bulletin composer (#/compose): what to air — Vietnamese text with a TTS preview played
// here (Web Audio: the page's CSP allows no blob: media, and the token never goes in a URL), a
// clip from the library (searchable, or uploaded right here with its progress, upload.js), or
// a test tone — then target zones from the tree, the priority, and one POST /broadcasts: it
// airs now, or waits for an approver where a target zone asks for approval. The API's refusal
// is shown next to the field it names. Only zones where the user may operate can be ticked;
// the rest of the visible tree is shown for orientation, without a box.

import { api } from "./api.js";
import { CLIP_CHOICE } from "./clips.js";
import { $, h } from "./dom.js";
import { ADMIN, OPERATE, allowed, anywhere } from "./grants.js";
import { formatNumber, t } from "./i18n.js";
import { needsApproval, store, zoneName } from "./store.js";
import { fieldErrors, showError } from "./ui.js";
import { chosenZones, drawZonePicker } from "./zonepick.js";
import { fold, formatDuration, uploader } from "./upload.js";

const PRIORITIES = ["normal", "priority", "background"];
const TEXT_MAX = 5000;
const KINDS = ["tts", "clip", "tone"];
const TONE = { hz: 1000, seconds: 5, minHz: 25, maxHz: 20000, maxSeconds: 3600 };

const preview = { ctx: null, buffer: null, node: null, text: "" };
let aired = null; // the last broadcast aired from here: {id, state, expected, confirmed}
const clips = { list: null, chosen: "", upload: null }; // the clip picker

export function render(view) {
  clips.chosen = sessionStorage.getItem(CLIP_CHOICE) || "";
  sessionStorage.removeItem(CLIP_CHOICE);
  const kind = clips.chosen ? "clip" : "tts";
  clips.upload = uploader("compose-upload", clipUploaded);
  const form = h("form", { id: "compose", class: "compose", "data-testid": "compose", novalidate: true },
    h("fieldset", { class: "field kinds" },
      h("legend", { text: t("compose.kind") }),
      KINDS.map((k) => h("span", { class: "kind" },
        h("input", { type: "radio", name: "compose-kind", id: `compose-kind-${k}`, value: k, "data-testid": `compose-kind-${k}`,
          checked: k === kind, on: { change: showKind } }),
        h("label", { for: `compose-kind-${k}`, class: "inline", text: t(`compose.kind_${k}`) })))),
    h("div", { id: "compose-tts", "data-kind": "tts", hidden: kind !== "tts" },
      h("div", { class: "field" },
        h("label", { for: "compose-text", text: t("compose.text") }),
        h("p", { class: "hint", id: "compose-text-hint", text: t("compose.text_hint") }),
        h("textarea", {
          id: "compose-text", "data-testid": "compose-text", rows: 6, maxlength: TEXT_MAX, lang: "vi",
          required: true, "aria-describedby": "compose-text-hint compose-text-error",
        }),
        h("p", { class: "field-error", id: "compose-text-error", "data-error-for": "source.text", "data-testid": "compose-text-error" })),
      h("div", { class: "preview", role: "group", "aria-labelledby": "preview-title" },
        h("span", { id: "preview-title", class: "preview-title", text: t("compose.preview") }),
        h("button", { type: "button", id: "preview-make", "data-testid": "preview-make", text: t("compose.preview_make"), on: { click: makePreview } }),
        h("button", { type: "button", id: "preview-play", "data-testid": "preview-play", disabled: true, text: t("compose.preview_play"), on: { click: togglePlay } }),
        h("span", { id: "preview-state", "data-testid": "preview-state", "data-state": "none", role: "status", text: "" }))),
    h("div", { id: "compose-clip", "data-kind": "clip", hidden: kind !== "clip" },
      h("fieldset", { class: "field", "aria-describedby": "compose-clip-error" },
        h("legend", { text: t("compose.clip") }),
        h("label", { for: "compose-clip-search", class: "sub", text: t("compose.clip_search") }),
        h("input", { id: "compose-clip-search", type: "search", "data-testid": "compose-clip-search", on: { input: renderClips } }),
        h("div", { id: "compose-clips", "data-testid": "compose-clips" }, h("p", { class: "loading", text: t("app.loading") })),
        h("p", { class: "field-error", id: "compose-clip-error", "data-error-for": "source.clip", "data-testid": "compose-clip-error" })),
      h("details", { class: "upload-inline", "data-testid": "compose-upload-open" },
        h("summary", { text: t("compose.clip_upload") }),
        clips.upload.element)),
    h("div", { id: "compose-tone", "data-kind": "tone", hidden: kind !== "tone" },
      h("p", { class: "hint", text: t("compose.tone_hint") }),
      h("div", { class: "field inline-fields" },
        h("span", {},
          h("label", { for: "compose-tone-hz", text: t("compose.tone_hz") }),
          h("input", { id: "compose-tone-hz", type: "number", "data-testid": "compose-tone-hz", min: TONE.minHz, max: TONE.maxHz, step: "any",
            value: TONE.hz, inputmode: "decimal", "aria-describedby": "compose-tone-hz-error" }),
          h("p", { class: "field-error", id: "compose-tone-hz-error", "data-error-for": "source.hz", "data-testid": "compose-tone-hz-error" })),
        h("span", {},
          h("label", { for: "compose-tone-seconds", text: t("compose.tone_seconds") }),
          h("input", { id: "compose-tone-seconds", type: "number", "data-testid": "compose-tone-seconds", min: 0.1, max: TONE.maxSeconds, step: "any",
            value: TONE.seconds, inputmode: "decimal", "aria-describedby": "compose-tone-seconds-error" }),
          h("p", { class: "field-error", id: "compose-tone-seconds-error", "data-error-for": "source.seconds", "data-testid": "compose-tone-seconds-error" })))),
    h("p", { class: "field-error", id: "compose-source-error", "data-error-for": "source" }),
    h("fieldset", { class: "field", "aria-describedby": "compose-zones-error" },
      h("legend", { text: t("compose.zones") }),
      h("p", { class: "hint", text: t("compose.zones_hint") }),
      h("div", { id: "compose-zones", "data-testid": "compose-zones" }),
      h("p", { class: "field-error", id: "compose-zones-error", "data-error-for": "zones", "data-testid": "compose-zones-error" })),
    h("div", { class: "field" },
      h("label", { for: "compose-priority", text: t("compose.priority") }),
      h("select", { id: "compose-priority", "data-testid": "compose-priority", "aria-describedby": "compose-priority-error" },
        PRIORITIES.map((p) => h("option", { value: p, text: t(`priority.${p}`) }))),
      h("p", { class: "field-error", id: "compose-priority-error", "data-error-for": "priority" })),
    h("div", { class: "field" },
      h("label", { for: "compose-label", text: t("compose.label") }),
      h("input", { id: "compose-label", "data-testid": "compose-label", maxlength: 200, "aria-describedby": "compose-label-error" }),
      h("p", { class: "field-error", id: "compose-label-error", "data-error-for": "label" })),
    anywhere(store.user, ADMIN) ? h("div", { class: "field" },
      h("input", { type: "checkbox", id: "compose-override", "data-testid": "compose-override", "aria-describedby": "compose-override-why" }),
      h("label", { for: "compose-override", class: "inline", text: t("compose.override") }),
      h("p", { class: "hint", id: "compose-override-why", "data-testid": "compose-override-why", text: t("compose.override_hint") })) : null,
    h("p", { id: "compose-approval", class: "notice", "data-testid": "compose-approval", hidden: true, text: t("compose.needs_approval") }),
    h("button", { type: "submit", class: "primary big", id: "compose-submit", "data-testid": "compose-submit", text: t("compose.air_now") }));
  form.addEventListener("submit", submit);
  form.addEventListener("input", (e) => {
    if (e.target.id === "compose-text" && preview.text !== e.target.value) forgetPreview();
    if (e.target.getAttribute("aria-invalid") === "true") clearError(e.target);
  });
  view.replaceChildren(
    h("h1", { text: t("nav.compose") }),
    form,
    h("section", { id: "compose-result", class: "card", "data-testid": "compose-result", "aria-live": "polite", hidden: true }));
  renderZones();
  renderResult();
  loadClips().catch(showError);
}

export function update(what) {
  if (what === "snapshot") renderZones();
  if (what === "reach" || what === "onair" || what === "snapshot") renderResult();
}

export function leave() {
  stopPlaying();
  if (clips.upload) clips.upload.abort();
  clips.upload = null;
}

// ---- zones ---------------------------------------------------------------------------------

function renderZones() {
  const box = $("compose-zones");
  if (!box) return;
  drawZonePicker(box, { prefix: "compose-zone", roles: OPERATE, why: "compose.zone_not_yours", onChange: zonesChanged });
}

/** The override (an admin of every chosen zone) and the approval notice follow the zones. */
function zonesChanged(chosen) {
  const override = $("compose-override");
  if (override) {
    const may = chosen.every((z) => allowed(store.user, ADMIN, z));
    override.disabled = !may;
    if (!may) override.checked = false;
    $("compose-override-why").textContent = t(may ? "compose.override_hint" : "compose.override_why_not");
  }
  const approval = chosen.some(needsApproval);
  $("compose-approval").hidden = !approval;
  $("compose-submit").textContent = t(approval ? "compose.submit_for_approval" : "compose.air_now");
}

/** The user is correcting a field: its error goes (the API judges again on submit). */
function clearError(input) {
  input.removeAttribute("aria-invalid");
  for (const id of (input.getAttribute("aria-describedby") || "").split(" ")) {
    const slot = id && $(id);
    if (slot && slot.dataset.errorFor) slot.textContent = "";
  }
}

// ---- what to air: text, a clip or a test tone ---------------------------------------------

function chosenKind() {
  const r = document.querySelector('input[name="compose-kind"]:checked');
  return r ? r.value : "tts";
}

function showKind() {
  const kind = chosenKind();
  for (const box of document.querySelectorAll("#compose [data-kind]")) box.hidden = box.dataset.kind !== kind;
  if (kind !== "tts") stopPlaying();
}

async function loadClips() {
  const data = await api("GET", "/clips");
  clips.list = data.clips;
  renderClips();
}

function chooseClip(id) {
  clips.chosen = id;
  $("compose-clip-error").textContent = ""; // "choose a clip" is answered
}

async function clipUploaded(clip) {
  chooseClip(clip.id);
  $("compose-clip-search").value = "";
  await loadClips();
  const radio = $(`compose-clip-${clip.id}`);
  if (radio) radio.focus();
}

/** The library as radio buttons, filtered by the search (marks ignored); the chosen clip
 * stays listed whatever the search says. */
function renderClips() {
  const box = $("compose-clips");
  if (!box || !clips.list) return;
  const q = fold($("compose-clip-search").value.trim());
  const shown = clips.list.filter((c) => c.id === clips.chosen || !q || fold(`${c.name} ${c.id}`).includes(q));
  if (!clips.list.length) {
    box.replaceChildren(h("p", { class: "muted", "data-testid": "compose-clips-empty", text: t("clips.empty") }));
    return;
  }
  const none = shown.length ? [] : [h("p", { class: "muted", text: t("clips.none_match") })];
  box.replaceChildren(h("ul", { class: "clip-pick" }, shown.map((c) => h("li", {},
    h("input", { type: "radio", name: "compose-clip", id: `compose-clip-${c.id}`, value: c.id, "data-testid": `compose-clip-${c.id}`,
      checked: c.id === clips.chosen, "aria-describedby": "compose-clip-error",
      on: { change: () => chooseClip(c.id) } }),
    h("label", { for: `compose-clip-${c.id}`, class: "inline" }, c.name || t("clips.no_name"),
      h("span", { class: "muted small", text: ` (${formatDuration(c.seconds)})` }))))), ...none);
}

/** The broadcast's `source`, or {missing} with what the form lacks, by field. */
function chosenSource() {
  const kind = chosenKind();
  if (kind === "clip") {
    return clips.chosen ? { source: { kind: "clip", clip: clips.chosen } } : { missing: { "source.clip": t("compose.need_clip") } };
  }
  if (kind === "tone") {
    const hz = Number($("compose-tone-hz").value);
    const seconds = Number($("compose-tone-seconds").value);
    const missing = {};
    if (!$("compose-tone-hz").value || !Number.isFinite(hz)) missing["source.hz"] = t("compose.need_hz");
    if (!$("compose-tone-seconds").value || !Number.isFinite(seconds)) missing["source.seconds"] = t("compose.need_seconds");
    return Object.keys(missing).length ? { missing } : { source: { kind: "tone", hz, seconds } };
  }
  const text = $("compose-text").value;
  return text.trim() ? { source: { kind: "tts", text } } : { missing: { "source.text": t("compose.need_text") } };
}

// ---- preview -------------------------------------------------------------------------------

function setPreviewState(state, text) {
  const el = $("preview-state");
  if (!el) return;
  el.dataset.state = state;
  el.textContent = text;
  $("preview-play").disabled = !preview.buffer;
  $("preview-play").textContent = t(state === "playing" ? "compose.preview_stop" : "compose.preview_play");
}

function forgetPreview() {
  stopPlaying();
  preview.buffer = null;
  preview.text = "";
  setPreviewState("none", "");
}

async function makePreview() {
  const form = $("compose");
  const text = $("compose-text").value;
  fieldErrors(form, null);
  showError(null);
  if (!text.trim()) {
    fieldErrors(form, { "source.text": t("compose.need_text") });
    return;
  }
  forgetPreview();
  setPreviewState("making", t("compose.preview_making"));
  try {
    const wav = await api("POST", "/tts/preview", { text }, { as: "arrayBuffer" });
    preview.ctx = preview.ctx || new AudioContext();
    preview.buffer = await preview.ctx.decodeAudioData(wav);
    preview.text = text;
    setPreviewState("ready", t("compose.preview_ready", { seconds: formatNumber(Math.round(preview.buffer.duration * 10) / 10) }));
    $("preview-play").focus();
  } catch (err) {
    setPreviewState("none", "");
    if (err.field === "text") err.field = "source.text";
    if (!fieldErrors(form, err)) showError(err);
  }
}

function stopPlaying() {
  if (preview.node) {
    preview.node.onended = null;
    preview.node.stop();
    preview.node = null;
  }
}

async function togglePlay() {
  if (preview.node) {
    stopPlaying();
    setPreviewState("ready", t("compose.preview_stopped"));
    return;
  }
  if (!preview.buffer) return;
  await preview.ctx.resume();
  const node = preview.ctx.createBufferSource();
  node.buffer = preview.buffer;
  node.connect(preview.ctx.destination);
  node.onended = () => {
    preview.node = null;
    setPreviewState("ready", t("compose.preview_done"));
  };
  preview.node = node;
  node.start();
  setPreviewState("playing", t("compose.preview_playing"));
}

// ---- air -----------------------------------------------------------------------------------

async function submit(event) {
  event.preventDefault();
  const form = $("compose");
  fieldErrors(form, null);
  showError(null);
  const { source, missing = {} } = chosenSource();
  const zones = chosenZones($("compose-zones"));
  if (!zones.length) missing.zones = t("compose.need_zones");
  if (Object.keys(missing).length) {
    fieldErrors(form, missing);
    return;
  }
  const button = $("compose-submit");
  button.disabled = true;
  try {
    const b = await api("POST", "/broadcasts", {
      zones, priority: $("compose-priority").value, label: $("compose-label").value.trim(),
      source,
      override_quiet_hours: Boolean($("compose-override") && $("compose-override").checked),
    });
    aired = { id: b.id, state: b.state, zones: b.zones, label: b.label, expected: null, confirmed: null };
    renderResult();
    await settle(b.id);
  } catch (err) {
    if (!fieldErrors(form, err)) showError(err);
  } finally {
    button.disabled = false;
  }
}

/** The mixer starts a broadcast on its next frame, so POST answers "waiting": read the record
 * and its reach again a few times until it has settled (the event stream, when there is one,
 * keeps it current after that). */
async function settle(id) {
  for (const delayMs of [0, 300, 1000, 3000]) {
    await new Promise((resolve) => setTimeout(resolve, delayMs));
    if (!aired || aired.id !== id) return;
    await reload(id);
    if (!aired || aired.state !== "waiting") return;
  }
}

async function reload(id) {
  const [b, reach] = await Promise.all([
    api("GET", `/broadcasts/${id}`), api("GET", `/broadcasts/${id}/reach`).catch(() => null)]);
  if (!aired || aired.id !== id) return;
  aired.state = b.state;
  if (reach) {
    aired.expected = reach.expected;
    aired.confirmed = reach.confirmed.length;
  }
  renderResult();
}

async function stopAired() {
  if (!aired) return;
  try {
    const b = await api("DELETE", `/broadcasts/${aired.id}`);
    aired.state = b.state;
    renderResult();
  } catch (err) {
    showError(err);
  }
}

function renderResult() {
  const box = $("compose-result");
  if (!box || !aired) return;
  const live = store.reach.get(aired.id);
  if (live) {
    aired.expected = live.expected;
    aired.confirmed = live.confirmed;
  }
  const onAir = [...store.onAir.values()].some((b) => b && b.id === aired.id);
  if (onAir && aired.state === "waiting") aired.state = "on_air";
  box.hidden = false;
  box.dataset.state = aired.state;
  box.dataset.broadcast = String(aired.id);
  const reach = aired.expected === null ? t("compose.reach_unknown")
    : t("compose.reach", { confirmed: aired.confirmed, expected: aired.expected });
  const stoppable = ["on_air", "waiting", "pending_approval"].includes(aired.state);
  box.replaceChildren(
    h("h2", { text: t("compose.result", { id: aired.id }) }),
    h("p", { "data-testid": "compose-state", text: t(`state.${aired.state}`) }),
    h("p", { text: aired.zones.map(zoneName).join(", ") }),
    h("p", { "data-testid": "compose-reach", "data-confirmed": aired.confirmed ?? "", "data-expected": aired.expected ?? "", text: reach }),
    h("div", { class: "actions" },
      h("button", { type: "button", "data-testid": "compose-reload", text: t("dash.refresh"),
        on: { click: () => reload(aired.id).catch(showError) } }),
      stoppable ? h("button", { type: "button", "data-testid": "compose-stop", text: t("compose.stop"), on: { click: stopAired } }) : null));
}
