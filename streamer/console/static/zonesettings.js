// The settings of one zone on the zones page ("Cài đặt", for a zone the admin administers):
// its quiet hours (own, none, or inherited), the voice its TTS bulletins are read in (a voice
// of GET /tts/voices, or inherited), and three switches: approval before airing, public
// listen-in, test zone. Saving sends one PATCH /zones/{id} with only what changed; nothing
// shows as saved before the API answers, then the panel shows the answer (and the store takes
// it, with what the zones below now inherit). A refusal goes next to the field it names. What
// a zone inherits is read from its ancestors in the tree: every ancestor of a zone one can see
// is in it (GET /zones shows the path to one's grants).

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { t } from "./i18n.js";
import { store, zoneName } from "./store.js";
import { fieldErrors, showError } from "./ui.js";

const FLAGS = ["requires_approval", "public_listen", "test"];
const QUIET_MODES = ["inherit", "none", "own"];

let voicesCall = null; // GET /tts/voices, asked once per visit of the page

/** Ask for the voice list again at the next draw (the page was opened anew). */
export function forgetVoices() {
  voicesCall = null;
}

/** The voice names, or null when they could not be read. */
function voiceNames() {
  voicesCall = voicesCall || api("GET", "/tts/voices").then((r) => r.voices, () => null);
  return voicesCall;
}

/** The zone whose own `key` ("quiet_hours", "voice") is in force at `id`: `id` itself or its
 * nearest ancestor that sets one; "" when none does (the streamer's default applies). */
function setBy(id, key) {
  for (let a = id; a; a = store.parentOf.get(a)) {
    const z = store.zoneById.get(a);
    if (z && z[key] !== null && z[key] !== undefined) return a;
  }
  return "";
}

/** "22:00-05:00", or the words for no quiet hours. */
const quietText = (q) => (q ? q : t("zset.quiet_none_short"));

/** Where a value in force comes from: this zone, a zone above (by name), or the default. */
function fromText(z, by) {
  if (by === z.id) return t("zset.from_own");
  return by ? t("zset.from_zone", { zone: zoneName(by) }) : t("zset.from_default");
}

/** The voice in force at `id` (null: the streamer's default voice) and the zone that set it. */
function voiceAt(id) {
  const by = setBy(id, "voice");
  return { voice: by ? store.zoneById.get(by).voice : null, by };
}

/** Draw the settings of zone `z` in `box` (an empty box when there is none). */
export async function drawSettings(box, z) {
  box.dataset.zone = z ? z.id : "";
  box.hidden = !z;
  if (!z) {
    box.replaceChildren();
    return;
  }
  box.replaceChildren(h("h2", { id: "zs-title", text: t("zset.title") }),
    h("p", { class: "muted", text: t("app.loading") }));
  const names = await voiceNames();
  if (box.dataset.zone !== z.id || !box.isConnected) return; // another zone was chosen meanwhile
  box.replaceChildren(h("h2", { id: "zs-title", text: t("zset.title") }), settingsForm(z, names));
}

function settingsForm(z, names) {
  return h("form", { id: "zs-form", class: "zones-form", "data-testid": "zs-form", novalidate: true,
    on: { submit: (e) => { e.preventDefault(); save(z.id); } } },
    quietField(z),
    voiceField(z, names),
    FLAGS.map((f) => flagField(z, f)),
    h("p", { id: "zs-err", class: "field-error", "data-testid": "zs-error", "data-error-for": "id" }),
    h("p", { class: "actions" },
      h("button", { type: "submit", id: "zs-save", class: "primary", "data-testid": "zs-save", text: t("zset.save") })),
    h("p", { id: "zs-status", class: "status-line", role: "status", "data-testid": "zs-status" }));
}

function quietField(z) {
  const mode = z.quiet_hours === null ? "inherit" : z.quiet_hours === "" ? "none" : "own";
  const parent = store.parentOf.get(z.id);
  const above = parent
    ? t("zset.quiet_inherit_from", { hours: quietText(store.zoneById.get(parent).quiet_hours_in_force),
      from: fromText(z, setBy(parent, "quiet_hours")) })
    : t("zset.quiet_inherit_default");
  const labels = { inherit: above, none: t("zset.quiet_none"), own: t("zset.quiet_own") };
  return h("fieldset", { class: "field", "data-testid": "zs-quiet-field" },
    h("legend", { text: t("zset.quiet") }),
    h("p", { class: "hint", id: "zs-quiet-hint", text: t("zset.quiet_hint") }),
    h("p", { "data-testid": "zs-quiet-in-force", "data-value": z.quiet_hours_in_force,
      text: t("zset.in_force", { value: quietText(z.quiet_hours_in_force), from: fromText(z, setBy(z.id, "quiet_hours")) }) }),
    QUIET_MODES.map((m) => h("div", {},
      h("input", { type: "radio", name: "zs-quiet-mode", id: `zs-quiet-${m}`, value: m, "data-testid": `zs-quiet-${m}`,
        checked: m === mode }),
      h("label", { for: `zs-quiet-${m}`, class: "inline", text: labels[m] }))),
    h("input", { id: "zs-quiet", "data-testid": "zs-quiet", value: mode === "own" ? z.quiet_hours : "",
      placeholder: "22:00-05:00", inputmode: "numeric", maxlength: 11, "aria-label": t("zset.quiet_own"),
      "aria-describedby": "zs-quiet-err zs-quiet-hint",
      on: { input: () => { $("zs-quiet-own").checked = true; } } }),
    h("p", { id: "zs-quiet-err", class: "field-error", "data-error-for": "quiet_hours" }));
}

function voiceField(z, names) {
  const parent = store.parentOf.get(z.id);
  const above = parent ? voiceAt(parent) : { voice: null, by: "" };
  const own = z.voice || "";
  const list = names || [];
  const here = voiceAt(z.id);
  return h("div", { class: "field", "data-testid": "zs-voice-field" },
    h("label", { for: "zs-voice", text: t("zset.voice") }),
    h("p", { class: "hint", id: "zs-voice-hint",
      text: names === null ? t("zset.voice_list_failed") : list.length ? t("zset.voice_hint") : t("zset.voice_none") }),
    h("p", { "data-testid": "zs-voice-in-force", "data-value": here.voice || "",
      text: t("zset.in_force", { value: here.voice || t("zset.voice_default"), from: fromText(z, here.by) }) }),
    h("select", { id: "zs-voice", "data-testid": "zs-voice", "aria-describedby": "zs-voice-err zs-voice-hint" },
      h("option", { value: "", selected: !own,
        text: t("zset.voice_inherit", { voice: above.voice || t("zset.voice_default"), from: fromText(z, above.by) }) }),
      list.map((v) => h("option", { value: v, selected: v === own, text: v })),
      own && !list.includes(own) ? h("option", { value: own, selected: true, text: t("zset.voice_gone", { voice: own }) }) : null),
    h("p", { id: "zs-voice-err", class: "field-error", "data-error-for": "voice" }));
}

function flagField(z, f) {
  return h("div", { class: "field" },
    h("input", { type: "checkbox", id: `zs-${f}`, "data-testid": `zs-${f}`, checked: z[f],
      "aria-describedby": `zs-${f}-err zs-${f}-hint` }),
    h("label", { for: `zs-${f}`, class: "inline", text: t(`zset.${f}`) }),
    h("p", { class: "hint", id: `zs-${f}-hint`, text: t(`zset.${f}_hint`) }),
    h("p", { id: `zs-${f}-err`, class: "field-error", "data-error-for": f }));
}

/** The PATCH body for what the form changed on `z` ({} when nothing), or {error: {field: …}}. */
function changes(z) {
  const body = {};
  const mode = QUIET_MODES.find((m) => $(`zs-quiet-${m}`).checked);
  const own = $("zs-quiet").value.trim();
  if (mode === "inherit" && z.quiet_hours !== null) body.inherit_quiet_hours = true;
  if (mode === "none" && z.quiet_hours !== "") body.quiet_hours = "";
  if (mode === "own" && !own) return { error: { quiet_hours: t("zset.need_quiet") } };
  if (mode === "own" && own !== z.quiet_hours) body.quiet_hours = own;
  const voice = $("zs-voice").value;
  if (voice !== (z.voice || "")) {
    if (voice) body.voice = voice;
    else body.inherit_voice = true;
  }
  for (const f of FLAGS) if ($(`zs-${f}`).checked !== z[f]) body[f] = $(`zs-${f}`).checked;
  return { body };
}

/** Whether the form shows something not yet saved. */
export function unsaved() {
  const z = store.zoneById.get($("zs-form") ? $("zones-settings").dataset.zone : "");
  if (!z) return false;
  const { body, error } = changes(z);
  return Boolean(error) || Object.keys(body).length > 0;
}

/** The answer's settings into the store: the zone's own, and what every zone below it now has
 * in force (the answer is the zone with its subtree). */
function takeAnswer(node) {
  const z = store.zoneById.get(node.id);
  if (z) {
    const { children, ...settings } = node;
    Object.assign(z, settings);
  }
  for (const c of node.children) takeAnswer(c);
}

async function save(id) {
  const form = $("zs-form");
  const z = store.zoneById.get(id);
  fieldErrors(form, null);
  showError(null);
  $("zs-status").textContent = "";
  const { body, error } = changes(z);
  if (error) {
    fieldErrors(form, error);
    return;
  }
  if (!Object.keys(body).length) {
    $("zs-status").textContent = t("zset.nothing_changed");
    return;
  }
  $("zs-save").disabled = true;
  $("zs-status").textContent = t("zset.saving");
  let out;
  try {
    out = await api("PATCH", `/zones/${encodeURIComponent(id)}`, body);
  } catch (err) {
    if (!$("zs-form") || $("zones-settings").dataset.zone !== id) return; // left, or another zone
    $("zs-save").disabled = false;
    $("zs-status").textContent = "";
    if (!fieldErrors(form, err)) showError(err);
    return;
  }
  takeAnswer(out);
  const box = $("zones-settings");
  if (!box || box.dataset.zone !== id) return;
  await drawSettings(box, store.zoneById.get(id));
  const status = $("zs-status");
  if (!status) return;
  status.textContent = t("zset.saved", { zone: out.name });
  status.classList.add("ok");
}
