// The emergency panel (#/emergency), set apart in a red frame. From the top: the emergencies
// in force in the user's area, each with its live reach (speakers that confirmed playing it,
// and the list of those that did not) and a cancel button; one "stop everything in my area"
// button; the form to air an emergency (zones, content: text, a clip or a live input; label,
// chime, cadence, expiry). Nothing is sent before a confirmation step: a modal dialog that
// sums up what will happen; only its Confirm button makes the one API call. The API's refusal
// is shown next to the field it names. What is in force is read from GET /broadcasts (an
// emergency waiting for its next airing is in no channel, so the store's on-air map alone
// would miss it), again whenever the stream says an emergency started or ended.

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { EMERGENCY, OPERATE, allowed, covers } from "./grants.js";
import { formatNumber, formatTime, t } from "./i18n.js";
import { emergenciesOnAir, refresh, store, zoneName } from "./store.js";
import { confirmStep, fieldErrors, showError } from "./ui.js";
import { chosenZones, drawZonePicker } from "./zonepick.js";

const KINDS = ["tts", "clip", "live"];
const CADENCES_S = [0, 900, 1800, 3600, 7200]; // 0: once
const EXPIRIES_S = [3600, 10800, 21600, 86400, 0]; // 0: never (until cancelled)
const DEFAULT_EXPIRY_S = 10800;
const TEXT_MAX = 5000;
const IN_FORCE = ["on_air", "waiting"];

const page = {
  active: new Map(), // broadcast id → what the panel shows of an emergency in force
  timers: new Set(),
  reachDue: new Set(), // ids whose speaker lists are to be read again (after "reach" events)
  reachSoon: false, // a read of reachDue is scheduled
  live: 0, // bumped on leave(): answers arriving later are dropped
  due: new Set(), // store changes waiting for the next frame
  frame: 0,
};

export function render(view) {
  page.live += 1;
  page.active.clear();
  const area = myArea();
  view.replaceChildren(h("div", { class: "emergency-page", "data-testid": "emergency" },
    h("div", { class: "emergency-head" },
      h("h1", { text: t("emergency.title") }),
      h("p", { text: t("emergency.intro") })),
    h("p", { id: "emergency-status", class: "emergency-status", "data-testid": "emergency-status", role: "status" }),
    h("section", { class: "card emergency-active", "aria-labelledby": "emergency-active-title" },
      h("div", { class: "page-head" },
        h("h2", { id: "emergency-active-title", text: t("emergency.active") }),
        h("button", { type: "button", "data-testid": "emergency-refresh", text: t("dash.refresh"),
          on: { click: () => reloadAll().catch(showError) } })),
      h("p", { id: "emergency-none", class: "muted", "data-testid": "emergency-none", text: t("emergency.none") }),
      h("ul", { id: "emergency-list", class: "plain", "data-testid": "emergency-list" })),
    h("section", { class: "card stop-all", "aria-labelledby": "stop-all-title" },
      h("h2", { id: "stop-all-title", text: t("emergency.stop_all_title") }),
      h("p", { class: "hint", id: "stop-all-area", "data-testid": "stop-all-area",
        text: t("emergency.stop_all_area", { zones: area.zones.map(zoneName).join(", ") }) }),
      area.onlyEmergencies ? h("p", { class: "hint", "data-testid": "stop-all-only-emergencies", text: t("emergency.stop_all_only_emergencies") }) : null,
      h("button", { type: "button", id: "stop-all", class: "danger big", "data-testid": "stop-all",
        text: t("emergency.stop_all"), on: { click: stopAll } }),
      h("p", { id: "stop-all-result", "data-testid": "stop-all-result", role: "status" })),
    form(),
    h("dialog", { id: "emergency-dialog", class: "confirm", "data-testid": "confirm-dialog",
      "aria-labelledby": "emergency-dialog-title", "aria-describedby": "emergency-dialog-body" })));
  renderZones();
  showKind();
  renderActive();
  reloadAll().catch(showError);
  loadPickers();
}

/** Store changes come an event at a time (a province-wide emergency is one "onair" per
 * channel): they are handled once per frame. */
export function update(what) {
  page.due.add(what);
  if (!page.frame) page.frame = requestAnimationFrame(changed);
}

function changed() {
  page.frame = 0;
  const due = new Set(page.due);
  page.due.clear();
  if (!$("emergency-list")) return;
  if (due.has("snapshot")) renderZones();
  if (due.has("snapshot") || due.has("emergency") ||
      // an emergency this page does not know yet (it started elsewhere): read the list again
      (due.has("onair") && emergenciesOnAir().some((e) => !page.active.has(e.id)))) {
    listActive().catch(showError);
  }
  if (due.has("reach")) {
    for (const [id, e] of page.active) {
      const live = store.reach.get(id);
      if (!live || (live.confirmed === e.confirmed && live.expected === e.expected)) continue;
      e.confirmed = live.confirmed;
      e.expected = live.expected;
      page.reachDue.add(id);
    }
    if (page.reachDue.size && !page.reachSoon) {
      page.reachSoon = true;
      later(500, readDueReach);
    }
  }
  renderActive();
}

export function leave() {
  page.live += 1;
  if (page.frame) cancelAnimationFrame(page.frame);
  page.frame = 0;
  page.due.clear();
  for (const id of page.timers) clearTimeout(id);
  page.timers.clear();
  page.reachDue.clear();
  page.reachSoon = false;
  const dialog = $("emergency-dialog");
  if (dialog && dialog.open) dialog.close();
}

function later(ms, fn) {
  const live = page.live;
  const id = setTimeout(() => {
    page.timers.delete(id);
    if (live === page.live) fn();
  }, ms);
  page.timers.add(id);
}

function say(text) {
  const el = $("emergency-status");
  if (el) el.textContent = text;
}

// ---- the user's area -----------------------------------------------------------------------

/** The topmost zones where the user may air and stop emergencies, and whether "stop
 * everything" there can stop only emergencies (no operator role there: the API lets an
 * emergency officer stop emergencies, not bulletins). */
function myArea() {
  const granted = [...new Set(store.user.grants.filter((g) => EMERGENCY.includes(g.role)).map((g) => g.zone))];
  const zones = granted.filter((z) => !granted.some((o) => o !== z && covers(o, z)));
  return { zones, onlyEmergencies: !zones.every((z) => allowed(store.user, OPERATE, z)) };
}

function speakersUnder(zones) {
  return [...store.speakers.values()].filter((s) => zones.some((z) => covers(z, s.zone)));
}

// ---- the form ------------------------------------------------------------------------------

function errorSlot(id, field) {
  return h("p", { class: "field-error", id, "data-error-for": field, "data-testid": id });
}

function form() {
  const kindRadio = (k) => h("span", { class: "kind" },
    h("input", { type: "radio", name: "emergency-kind", id: `emergency-kind-${k}`, value: k,
      "data-testid": `emergency-kind-${k}`, checked: k === "tts", on: { change: showKind } }),
    h("label", { for: `emergency-kind-${k}`, class: "inline", text: t(`emergency.kind_${k}`) }));
  const option = (value, text, selected) => h("option", { value: String(value), text, selected });
  const f = h("form", { id: "emergency-form", class: "emergency-form", "data-testid": "emergency-form", novalidate: true },
    h("h2", { text: t("emergency.new") }),
    h("fieldset", { class: "field", "aria-describedby": "emergency-zones-error" },
      h("legend", { text: t("emergency.zones") }),
      h("p", { class: "hint", text: t("emergency.zones_hint") }),
      h("div", { id: "emergency-zones", "data-testid": "emergency-zones" }),
      errorSlot("emergency-zones-error", "zones")),
    h("fieldset", { class: "field", "aria-describedby": "emergency-source-error" },
      h("legend", { text: t("emergency.content") }),
      h("div", { class: "kinds" }, KINDS.map(kindRadio)),
      errorSlot("emergency-source-error", "source"),
      h("div", { class: "field", id: "emergency-tts", "data-kind": "tts" },
        h("label", { for: "emergency-text", text: t("emergency.text") }),
        h("p", { class: "hint", id: "emergency-text-hint", text: t("compose.text_hint") }),
        h("textarea", { id: "emergency-text", "data-testid": "emergency-text", rows: 5, maxlength: TEXT_MAX, lang: "vi",
          "aria-describedby": "emergency-text-hint emergency-text-error" }),
        errorSlot("emergency-text-error", "source.text")),
      h("div", { class: "field", id: "emergency-clip-box", "data-kind": "clip" },
        h("label", { for: "emergency-clip", text: t("emergency.clip") }),
        h("select", { id: "emergency-clip", "data-testid": "emergency-clip", "aria-describedby": "emergency-clip-error" },
          option("", t("emergency.loading"), true)),
        errorSlot("emergency-clip-error", "source.clip")),
      h("div", { class: "field", id: "emergency-live-box", "data-kind": "live" },
        h("label", { for: "emergency-input", text: t("emergency.input") }),
        h("p", { class: "hint", id: "emergency-input-hint", text: t("emergency.input_hint") }),
        h("select", { id: "emergency-input", "data-testid": "emergency-input", "aria-describedby": "emergency-input-hint emergency-input-error" },
          option("", t("emergency.loading"), true)),
        h("button", { type: "button", "data-testid": "emergency-inputs-reload", text: t("emergency.inputs_reload"),
          on: { click: loadPickers } }),
        errorSlot("emergency-input-error", "source.input"))),
    h("div", { class: "field" },
      h("label", { for: "emergency-label", text: t("emergency.label") }),
      h("input", { id: "emergency-label", "data-testid": "emergency-label", maxlength: 200, "aria-describedby": "emergency-label-error" }),
      errorSlot("emergency-label-error", "label")),
    h("div", { class: "field" },
      h("input", { type: "checkbox", id: "emergency-chime", "data-testid": "emergency-chime", checked: true,
        "aria-describedby": "emergency-chime-hint emergency-chime-error" }),
      h("label", { for: "emergency-chime", class: "inline", text: t("emergency.chime") }),
      h("p", { class: "hint", id: "emergency-chime-hint", text: t("emergency.chime_hint") }),
      errorSlot("emergency-chime-error", "chime")),
    h("div", { class: "field-row" },
      h("div", { class: "field" },
        h("label", { for: "emergency-cadence", text: t("emergency.cadence") }),
        h("select", { id: "emergency-cadence", "data-testid": "emergency-cadence", "aria-describedby": "emergency-cadence-error" },
          CADENCES_S.map((s) => option(s, cadenceText(s), s === 0))),
        errorSlot("emergency-cadence-error", "repeat_s")),
      h("div", { class: "field" },
        h("label", { for: "emergency-expiry", text: t("emergency.expiry") }),
        h("select", { id: "emergency-expiry", "data-testid": "emergency-expiry", "aria-describedby": "emergency-expiry-hint emergency-expiry-error" },
          EXPIRIES_S.map((s) => option(s, expiryText(s), s === DEFAULT_EXPIRY_S))),
        h("p", { class: "hint", id: "emergency-expiry-hint", text: t("emergency.expiry_hint") }),
        errorSlot("emergency-expiry-error", "expires_s"))),
    h("p", { class: "notice", text: t("emergency.what_happens") }),
    h("button", { type: "submit", id: "emergency-submit", class: "danger huge", "data-testid": "emergency-submit",
      text: t("emergency.air") }));
  f.addEventListener("submit", submit);
  return f;
}

function cadenceText(s) {
  if (!s) return t("emergency.cadence_once");
  return s % 3600 ? t("emergency.every_min", { n: s / 60 }) : t("emergency.every_h", { n: s / 3600 });
}

function expiryText(s) {
  return s ? t("emergency.expiry_h", { n: s / 3600 }) : t("emergency.expiry_none");
}

function kind() {
  const checked = document.querySelector('input[name="emergency-kind"]:checked');
  return checked ? checked.value : "tts";
}

function showKind() {
  for (const box of document.querySelectorAll("#emergency-form [data-kind]")) box.hidden = box.dataset.kind !== kind();
}

function renderZones() {
  const box = $("emergency-zones");
  if (!box) return;
  drawZonePicker(box, {
    prefix: "emergency-zone", roles: EMERGENCY, why: "emergency.zone_not_yours",
    extra: (z) => h("span", { class: "muted small", text: ` ${t("emergency.n_speakers", { n: formatNumber(speakersUnder([z.id]).length) })}` }),
  });
}

async function loadPickers() {
  const live = page.live;
  const [clips, inputs] = await Promise.all([
    api("GET", "/clips").then((d) => d.clips, (err) => err),
    api("GET", "/inputs").then((d) => d.inputs, (err) => err),
  ]);
  if (live !== page.live) return;
  fillPicker($("emergency-clip"), clips, "emergency.no_clips",
    (c) => [c.id, t("emergency.clip_option", { name: c.name || c.id.slice(0, 8), seconds: formatNumber(Math.round(c.seconds)) })]);
  fillPicker($("emergency-input"), inputs, "emergency.no_inputs",
    (i) => [i.id, t(i.sending ? "emergency.input_sending" : "emergency.input_silent", { name: i.name || i.id, id: i.id })]);
}

function fillPicker(select, items, emptyKey, entry) {
  if (!select) return;
  const keep = select.value;
  if (items instanceof Error) {
    select.replaceChildren(h("option", { value: "", text: t("emergency.list_failed", { message: items.message }) }));
    return;
  }
  const options = items.map((x) => {
    const [value, text] = entry(x);
    return h("option", { value, text, selected: value === keep });
  });
  select.replaceChildren(h("option", { value: "", text: t(items.length ? "emergency.choose" : emptyKey) }), ...options);
}

// ---- airing --------------------------------------------------------------------------------

/** The body of POST /emergency from the form, or the fields still to fill. */
function readForm() {
  const zones = chosenZones($("emergency-zones"));
  const missing = {};
  if (!zones.length) missing.zones = t("emergency.need_zones");
  const k = kind();
  let source;
  let content;
  if (k === "tts") {
    const text = $("emergency-text").value;
    if (!text.trim()) missing["source.text"] = t("emergency.need_text");
    source = { kind: "tts", text };
    content = t("emergency.content_tts", { text: text.length > 160 ? `${text.slice(0, 160)}…` : text });
  } else if (k === "clip") {
    const select = $("emergency-clip");
    if (!select.value) missing["source.clip"] = t("emergency.need_clip");
    source = { kind: "clip", clip: select.value };
    content = t("emergency.content_clip", { name: select.selectedOptions[0] ? select.selectedOptions[0].textContent : "" });
  } else {
    const select = $("emergency-input");
    if (!select.value) missing["source.input"] = t("emergency.need_input");
    source = { kind: "live", input: select.value };
    content = t("emergency.content_live", { name: select.selectedOptions[0] ? select.selectedOptions[0].textContent : "" });
  }
  const body = { zones, source, label: $("emergency-label").value.trim(), chime: $("emergency-chime").checked };
  const cadence = Number($("emergency-cadence").value);
  const expiry = Number($("emergency-expiry").value);
  if (cadence) body.repeat_s = cadence;
  if (expiry) body.expires_s = expiry;
  return { body, missing, content, cadence, expiry };
}

async function submit(event) {
  event.preventDefault();
  const f = $("emergency-form");
  fieldErrors(f, null);
  showError(null);
  const { body, missing, content, cadence, expiry } = readForm();
  if (Object.keys(missing).length) {
    fieldErrors(f, missing);
    return;
  }
  const reached = speakersUnder(body.zones);
  const online = reached.filter((s) => s.presence && s.presence.state === "online").length;
  const line = (testid, text, value) => h("p", { "data-testid": testid, "data-value": value, text });
  const yes = await confirmStep({
    dialog: $("emergency-dialog"),
    back: t("emergency.back"),
    title: t("emergency.confirm_title"),
    yes: t("emergency.confirm_air"),
    opener: $("emergency-submit"),
    lines: [
      line("confirm-zones", t("emergency.confirm_zones", { zones: body.zones.map(zoneName).join(", ") }), body.zones.join(",")),
      line("confirm-speakers", t("emergency.confirm_speakers", { n: formatNumber(reached.length), online: formatNumber(online) }), reached.length),
      line("confirm-content", content),
      body.label ? line("confirm-label", t("emergency.confirm_label", { label: body.label })) : null,
      h("div", { "data-testid": "confirm-options" },
        h("p", { text: t("emergency.confirm_chime", { chime: t(body.chime ? "emergency.chime_on" : "emergency.chime_off") }) }),
        h("p", { text: t("emergency.confirm_cadence", { cadence: cadenceText(cadence) }) }),
        h("p", { text: t("emergency.confirm_expiry", { expiry: expiryText(expiry) }) })),
      h("p", { class: "notice", text: t("emergency.what_happens") }),
    ],
  });
  if (!yes) {
    say(t("emergency.not_sent"));
    return;
  }
  const button = $("emergency-submit");
  button.disabled = true;
  try {
    const b = await api("POST", "/emergency", body);
    track(b);
    renderActive();
    say(t("emergency.aired", { id: b.id }));
    const title = $(`emergency-item-title-${b.id}`);
    if (title) title.focus();
    settle(b.id);
    refresh().catch(() => {}); // the banner, without waiting for the stream
  } catch (err) {
    if (!fieldErrors(f, err)) showError(err);
  } finally {
    button.disabled = false;
  }
}

/** The mixer starts an emergency on its next frame, so POST answers "waiting": read it and its
 * reach again a few times while it settles (the stream keeps it current after that). */
async function settle(id) {
  for (const delayMs of [300, 1000, 3000]) {
    await new Promise((resolve) => later(delayMs, resolve));
    if (!page.active.has(id)) return;
    await reloadOne(id).catch(() => {});
  }
}

// ---- emergencies in force ------------------------------------------------------------------

function track(b) {
  const e = page.active.get(b.id) || {
    id: b.id, confirmed: null, expected: null, confirmedList: null, notConfirmed: null, offline: null,
  };
  const plan = b.emergency || {};
  Object.assign(e, {
    label: b.label, zones: b.zones, state: b.state, kind: (b.source && b.source.kind) || "",
    text: (b.source && b.source.text) || "", started: b.started, nextAiring: b.next_airing,
    repeatS: plan.repeat_s || 0, expires: plan.expires || null,
  });
  page.active.set(b.id, e);
  return e;
}

async function reloadAll() {
  await listActive();
  await Promise.all([...page.active.keys()].map((id) => readReach(id).catch(() => {})));
  renderActive();
}

/** The emergencies in force that the user can see, from the recent broadcasts. */
async function listActive() {
  const live = page.live;
  const { broadcasts } = await api("GET", "/broadcasts?limit=200");
  if (live !== page.live) return;
  const seen = new Set();
  for (const b of broadcasts) {
    if (b.priority !== "emergency" || !IN_FORCE.includes(b.state)) continue;
    seen.add(b.id);
    const fresh = !page.active.has(b.id);
    track(b);
    if (fresh) readReach(b.id).then(renderActive, () => {});
  }
  for (const id of [...page.active.keys()]) if (!seen.has(id)) page.active.delete(id);
  renderActive();
}

async function reloadOne(id) {
  const b = await api("GET", `/broadcasts/${id}`);
  if (!page.active.has(id)) return;
  if (IN_FORCE.includes(b.state)) {
    track(b);
    await readReach(id);
  } else {
    page.active.delete(id);
    say(t("emergency.ended", { id, state: t(`state.${b.state}`) }));
  }
  renderActive();
}

async function readReach(id) {
  const live = page.live;
  const r = await api("GET", `/broadcasts/${id}/reach`);
  const e = page.active.get(id);
  if (!e || live !== page.live) return;
  e.expected = r.expected;
  e.confirmed = r.confirmed.length;
  e.confirmedList = r.confirmed;
  e.notConfirmed = r.not_confirmed;
  e.offline = r.offline;
}

function readDueReach() {
  page.reachSoon = false;
  const ids = [...page.reachDue];
  page.reachDue.clear();
  Promise.all(ids.map((id) => readReach(id).catch(() => {}))).then(renderActive);
}

function onAirNow(id) {
  for (const b of store.onAir.values()) if (b && b.id === id) return true;
  return false;
}

/** The list is updated in place, item by item, so a keyboard user's focus survives events. */
function renderActive() {
  const list = $("emergency-list");
  if (!list) return;
  $("emergency-none").hidden = page.active.size > 0;
  for (const li of [...list.children]) {
    if (page.active.has(Number(li.dataset.emergency))) continue;
    const hadFocus = li.contains(document.activeElement);
    li.remove();
    if (hadFocus) { // the focus must not fall back to the top of the page
      $("emergency-active-title").setAttribute("tabindex", "-1");
      $("emergency-active-title").focus();
    }
  }
  for (const e of [...page.active.values()].sort((a, b) => a.id - b.id)) {
    let li = list.querySelector(`[data-emergency="${e.id}"]`);
    if (!li) {
      li = activeItem(e);
      list.append(li);
    }
    fillItem(li, e);
  }
}

function activeItem(e) {
  const mayCancel = e.zones.every((z) => allowed(store.user, EMERGENCY, z));
  return h("li", { class: "emergency-item", "data-emergency": e.id, "data-testid": `emergency-item-${e.id}` },
    h("h3", { id: `emergency-item-title-${e.id}`, tabindex: "-1", "data-role": "title" }),
    h("p", { "data-role": "what", class: "small" }),
    h("p", { "data-role": "state", "data-testid": `emergency-state-${e.id}` }),
    h("p", { "data-role": "zones" }),
    h("p", { "data-role": "reach", class: "reach", "data-testid": `emergency-reach-${e.id}` }),
    h("progress", { "data-role": "bar", class: "reach-bar", "aria-labelledby": `emergency-item-title-${e.id}`, max: 1, value: 0 }),
    h("div", { "data-role": "missing", "data-testid": `emergency-missing-${e.id}` }),
    h("div", { class: "actions" },
      h("button", { type: "button", "data-testid": `emergency-reload-${e.id}`, text: t("emergency.reload_reach"),
        on: { click: () => reloadOne(e.id).catch(showError) } }),
      mayCancel
        ? h("button", { type: "button", class: "danger", "data-testid": `emergency-cancel-${e.id}`, text: t("emergency.cancel"),
          on: { click: (ev) => cancel(e.id, ev.currentTarget) } })
        : h("p", { class: "muted small", text: t("emergency.not_yours_to_cancel") })));
}

function fillItem(li, e) {
  const part = (role) => li.querySelector(`[data-role="${role}"]`);
  const onAir = onAirNow(e.id);
  const state = onAir ? "on_air" : e.state;
  li.dataset.state = state;
  part("title").textContent = t("emergency.item_title", { id: e.id, label: e.label || t("banner.no_label") });
  const what = e.kind === "tts" && e.text ? `${t("source.tts")}: “${e.text.length > 120 ? `${e.text.slice(0, 120)}…` : e.text}”`
    : (e.kind ? t(`source.${e.kind}`) : "");
  part("what").textContent = what;
  let stateText = t(`state.${state}`);
  if (!onAir && e.nextAiring) stateText = t("emergency.next_airing", { at: formatTime(e.nextAiring) });
  const plan = [cadenceText(e.repeatS), e.expires ? t("emergency.expires_at", { at: formatTime(e.expires, true) }) : t("emergency.expiry_none")];
  part("state").textContent = `${stateText} · ${plan.join(" · ")}`;
  part("zones").textContent = t("emergency.item_zones", { zones: e.zones.map(zoneName).join(", ") });
  const reach = part("reach");
  reach.dataset.confirmed = e.confirmed ?? "";
  reach.dataset.expected = e.expected ?? "";
  reach.textContent = e.expected === null ? t("compose.reach_unknown")
    : t("emergency.reach", { confirmed: formatNumber(e.confirmed), expected: formatNumber(e.expected) });
  const bar = part("bar");
  bar.max = Math.max(1, e.expected || 0);
  bar.value = e.confirmed || 0;
  const open = Boolean(li.querySelector("details[open]"));
  part("missing").replaceChildren(...missingLists(e), ...confirmedList(e, open));
}

function speakerLine(s) {
  const known = store.speakers.get(s.id);
  const name = known && known.name ? `${known.name} (${s.id})` : s.id;
  return h("li", { "data-speaker": s.id, text: `${name} — ${zoneName(s.zone)}` });
}

function missingLists(e) {
  if (e.notConfirmed === null) return [];
  if (e.expected === 0) return [h("p", { class: "muted", text: t("emergency.no_speakers") })];
  if (!e.notConfirmed.length && !e.offline.length) return [h("p", { class: "ok", text: t("emergency.all_confirmed") })];
  const out = [];
  if (e.notConfirmed.length) {
    out.push(h("p", { class: "list-title", text: t("emergency.not_confirmed", { n: e.notConfirmed.length }) }),
      h("ul", { "data-testid": `emergency-not-confirmed-${e.id}` }, e.notConfirmed.map(speakerLine)));
  }
  if (e.offline.length) {
    out.push(h("p", { class: "list-title bad", text: t("emergency.offline", { n: e.offline.length }) }),
      h("ul", { "data-testid": `emergency-offline-${e.id}` }, e.offline.map(speakerLine)));
  }
  return out;
}

/** Who confirmed, folded: the counter says how many, the list is there for who asks. */
function confirmedList(e, open) {
  if (!e.confirmedList || !e.confirmedList.length) return [];
  return [h("details", { open, "data-testid": `emergency-confirmed-${e.id}` },
    h("summary", { text: t("emergency.confirmed", { n: e.confirmedList.length }) }),
    h("ul", {}, e.confirmedList.map(speakerLine)))];
}

async function cancel(id, opener) {
  const e = page.active.get(id);
  if (!e) return;
  showError(null);
  const yes = await confirmStep({
    dialog: $("emergency-dialog"),
    back: t("emergency.back"),
    title: t("emergency.cancel_title", { id }),
    yes: t("emergency.confirm_cancel"),
    opener,
    lines: [h("p", { text: t("emergency.item_title", { id, label: e.label || t("banner.no_label") }) }),
      h("p", { text: t("emergency.item_zones", { zones: e.zones.map(zoneName).join(", ") }) })],
  });
  if (!yes) return;
  try {
    const b = await api("DELETE", `/emergency/${id}`);
    page.active.delete(id);
    renderActive();
    say(t("emergency.cancelled", { id, state: t(`state.${b.state}`) }));
    refresh().catch(() => {});
  } catch (err) {
    showError(err);
  }
}

// ---- stop everything in my area ------------------------------------------------------------

async function stopAll() {
  showError(null);
  const area = myArea();
  const channels = [...store.onAir].filter(([zone, b]) => b && area.zones.some((z) => covers(z, zone))).length;
  const yes = await confirmStep({
    dialog: $("emergency-dialog"),
    back: t("emergency.back"),
    title: t("emergency.stop_all_confirm_title"),
    yes: t("emergency.confirm_stop_all"),
    opener: $("stop-all"),
    lines: [
      h("p", { text: t("emergency.stop_all_area", { zones: area.zones.map(zoneName).join(", ") }) }),
      h("p", { "data-testid": "confirm-channels", "data-value": channels, text: t("emergency.stop_all_channels", { n: formatNumber(channels) }) }),
      area.onlyEmergencies ? h("p", { class: "notice", text: t("emergency.stop_all_only_emergencies") }) : null,
    ],
  });
  const result = $("stop-all-result");
  if (!yes) return;
  try {
    const body = { zones: area.zones };
    if (area.onlyEmergencies) body.priority = "emergency";
    const { stopped } = await api("POST", "/stop", body);
    result.dataset.stopped = stopped.join(",");
    result.textContent = stopped.length
      ? t("emergency.stop_all_done", { n: stopped.length, ids: stopped.map((id) => `#${id}`).join(", ") })
      : t("emergency.stop_all_nothing");
    for (const id of stopped) page.active.delete(id);
    renderActive();
    await refresh().catch(() => {});
  } catch (err) {
    showError(err);
  }
}
