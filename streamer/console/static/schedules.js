// Schedules (#/schedules): a week calendar of what is scheduled in the zones the user can
// see — recurring schedules, one-offs and relay windows — with the chosen zone's quiet hours
// shaded, and a form to create, change (PATCH) and remove (DELETE) a schedule. Rules are
// never expanded here: the streamer lists a week's occurrences (GET /schedules/occurrences)
// and answers a dry run of the form (POST /schedules/preview) with the next occurrences or the
// very refusal saving would get, shown next to its field before anything is saved. "This
// week" is the streamer's week, not this computer's (a commune office PC's clock may be off).
// At phone width the week is a list of days (console.css).

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { EMERGENCY, OPERATE, allowed, anywhere } from "./grants.js";
import { currentLang, t } from "./i18n.js";
import { store, zoneName } from "./store.js";
import { fieldErrors, showError } from "./ui.js";
import { chosenZones, drawZonePicker } from "./zonepick.js";

const TZ = "Asia/Ho_Chi_Minh";
const LOCALES = { vi: "vi-VN", en: "en-GB" };
const DAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"];
const MON_SAT = DAYS.slice(0, 6);
const PRESETS = ["once", "daily", "mon_sat", "morning_evening", "weekdays", "weekly", "custom"];
const PRESET_DAYS = { mon_sat: MON_SAT, morning_evening: MON_SAT, weekdays: DAYS.slice(0, 5) };
const KINDS = ["tts", "clip", "relay", "tone"];
const PREVIEW_DELAY_MS = 400;

const page = {
  user: "", // whose view this is (another user starts afresh)
  from: null, // first day shown (YYYY-MM-DD); null: the streamer's week
  week: null, // the last GET /schedules/occurrences answer
  schedules: new Map(), // id → Schedule
  clips: null, // [ClipMeta] once loaded (names for the calendar, choices for the form)
  zone: "", // the zone filter (quiet hours shaded are this zone's)
  editing: null, // the Schedule being edited, or null for a new one
  rule: "", // the last rule a preset built
  previewTimer: 0,
  previewSeq: 0,
};

export function render(view) {
  if (page.user !== store.user.name) Object.assign(page, { user: store.user.name, from: null, zone: "", clips: null });
  if (!page.zone || !store.zoneById.has(page.zone)) page.zone = defaultZone();
  const mayCreate = anywhere(store.user, OPERATE) || anywhere(store.user, EMERGENCY);
  view.replaceChildren(
    h("div", { class: "page-head" },
      h("h1", { text: t("nav.schedules") }),
      mayCreate ? h("button", { type: "button", class: "primary", "data-testid": "schedule-new", text: t("sched.new"),
        on: { click: () => openForm(null) } }) : null),
    h("div", { class: "cal-bar" },
      h("div", { class: "actions", role: "group", "aria-label": t("sched.week_nav") },
        h("button", { type: "button", "data-testid": "week-prev", text: t("sched.prev"), on: { click: () => moveWeek(-7) } }),
        h("button", { type: "button", "data-testid": "week-this", text: t("sched.this_week"), on: { click: () => moveWeek(0) } }),
        h("button", { type: "button", "data-testid": "week-next", text: t("sched.next"), on: { click: () => moveWeek(7) } })),
      h("p", { id: "week-title", class: "week-title", "data-testid": "week-title", "aria-live": "polite" }),
      h("div", { class: "cal-zone" },
        h("label", { for: "cal-zone", text: t("sched.zone_filter") }),
        h("select", { id: "cal-zone", "data-testid": "cal-zone", on: { change: (e) => { page.zone = e.target.value; renderWeek(); } } }))),
    legend(),
    h("div", { id: "cal", class: "cal", "data-testid": "calendar", "data-state": "loading" }),
    h("section", { id: "schedule-editor", class: "card editor", "data-testid": "schedule-editor", hidden: true,
      "aria-labelledby": "schedule-form-title" }));
  renderZoneSelect();
  load().catch(showError);
}

export function update(what) {
  if (what === "snapshot") {
    renderZoneSelect();
    renderWeek();
  }
}

export function leave() {
  clearTimeout(page.previewTimer);
  page.editing = null;
}

// ---- loading -------------------------------------------------------------------------------

function defaultZone() {
  const g = store.user && store.user.grants.find((x) => store.zoneById.has(x.zone));
  if (g) return g.zone;
  return store.zones.length ? store.zones[0].id : "";
}

async function load() {
  const query = page.from ? `?from=${page.from}` : "";
  const [week, list, clips] = await Promise.all([
    api("GET", `/schedules/occurrences${query}`), api("GET", "/schedules"),
    api("GET", "/clips").catch(() => null)]); // clip names only: the calendar does without
  if (clips) page.clips = clips.clips;
  page.week = week;
  page.from = week.first_day;
  page.schedules = new Map(list.schedules.map((s) => [s.id, s]));
  store.schedules = list.schedules;
  renderWeek();
}

function moveWeek(days) {
  page.from = days === 0 ? null : addDays(page.from, days);
  load().catch(showError);
}

// ---- dates and times (always in Asia/Ho_Chi_Minh) -------------------------------------------

function addDays(isoDay, n) {
  const d = new Date(`${isoDay}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

/** {day: "YYYY-MM-DD", hour, minute} of an instant, in Asia/Ho_Chi_Minh. */
function local(iso) {
  const parts = {};
  for (const p of new Intl.DateTimeFormat("en-CA", {
    timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  }).formatToParts(new Date(iso))) parts[p.type] = p.value;
  return { day: `${parts.year}-${parts.month}-${parts.day}`, hour: Number(parts.hour), minute: Number(parts.minute) };
}

function hhmm(hour, minute) {
  return `${String(hour).padStart(2, "0")}:${String(minute).padStart(2, "0")}`;
}

function dayName(isoDay, style = "long") {
  return new Intl.DateTimeFormat(LOCALES[currentLang()], {
    timeZone: "UTC", weekday: style, day: "numeric", month: "numeric",
  }).format(new Date(`${isoDay}T00:00:00Z`));
}

/** Quiet hours "HH:MM-HH:MM" as the bands of one day: [[startMin, endMin], …]. */
function quietBands(spec) {
  const m = /^(\d\d):(\d\d)-(\d\d):(\d\d)$/.exec(spec || "");
  if (!m) return [];
  const a = Number(m[1]) * 60 + Number(m[2]);
  const b = Number(m[3]) * 60 + Number(m[4]);
  return a < b ? [[a, b]] : [[0, b], [a, 24 * 60]].filter(([x, y]) => y > x);
}

// ---- the week ------------------------------------------------------------------------------

function legend() {
  const item = (cls, key) => h("li", {}, h("span", { class: `key occ-key ${cls}`, "aria-hidden": "true" }), t(key));
  return h("ul", { class: "legend cal-legend", "data-testid": "cal-legend", "aria-label": t("sched.legend") },
    item("kind-recurring", "sched.kind.recurring"), item("kind-once", "sched.kind.once"),
    item("kind-relay", "sched.kind.relay"), item("quiet", "sched.quiet"), item("inactive", "sched.inactive"));
}

function zoneOptions(nodes, depth) {
  return nodes.flatMap((z) => [
    h("option", { value: z.id, selected: z.id === page.zone, text: `${"— ".repeat(depth)}${z.name}` }),
    ...zoneOptions(z.children, depth + 1)]);
}

function renderZoneSelect() {
  const select = $("cal-zone");
  if (!select) return;
  if (!page.zone || !store.zoneById.has(page.zone)) page.zone = defaultZone();
  select.replaceChildren(...zoneOptions(store.zones, 0));
  select.value = page.zone;
}

/** Whether a schedule's zones touch the chosen zone: on it, above it or below it. */
function touches(s, zone) {
  return !zone || s.zones.some((z) => z === zone || zone.startsWith(`${z}.`) || z.startsWith(`${zone}.`));
}

function kindOf(s) {
  if (s.source.kind === "relay") return "relay";
  return s.rrule ? "recurring" : "once";
}

function whatOf(s) {
  if (s.label) return s.label;
  const src = s.source;
  if (src.kind === "tts") return src.text.length > 40 ? `${src.text.slice(0, 40)}…` : src.text;
  if (src.kind === "clip") {
    const c = (page.clips || []).find((x) => x.id === src.clip);
    return c && c.name ? c.name : t("sched.src.clip");
  }
  if (src.kind === "relay") return src.url;
  return t("sched.src.tone");
}

function mayChange(s) {
  const roles = s.priority === "emergency" ? EMERGENCY : OPERATE;
  return s.zones.every((z) => allowed(store.user, roles, z));
}

function renderWeek() {
  const cal = $("cal");
  if (!cal || !page.week) return;
  const first = page.week.first_day;
  const days = [...Array(7).keys()].map((i) => addDays(first, i));
  const today = local(page.week.now).day;
  $("week-title").textContent = t("sched.week_of", { first: dayName(days[0], "short"), last: dayName(days[6], "short") });
  const zone = store.zoneById.get(page.zone);
  const quiet = zone ? zone.quiet_hours_in_force : "";
  const bands = quietBands(quiet);
  const shown = page.week.occurrences.filter((o) => {
    const s = page.schedules.get(o.schedule);
    return s && touches(s, page.zone);
  });
  const nodes = [h("div", { class: "cal-corner", "aria-hidden": "true" })];
  for (let hour = 0; hour < 24; hour += 1) {
    nodes.push(h("div", { class: `cal-hour r${hour}`, "aria-hidden": "true", text: hhmm(hour, 0) }));
    nodes.push(h("div", { class: `cal-line r${hour}`, "aria-hidden": "true" }));
  }
  days.forEach((day, i) => {
    const items = shown.filter((o) => local(o.start).day === day);
    nodes.push(h("h2", { class: `cal-day c${i + 2}${day === today ? " today" : ""}`, "data-testid": "cal-day", "data-day": day },
      dayName(day), day === today ? h("span", { class: "today-mark", text: ` · ${t("sched.today")}` }) : null));
    const inDay = []; // [minute of the day, node]: in time order, as the phone's list reads
    for (const [a, b] of bands) {
      const top = Math.floor(a / 60);
      const bottom = Math.ceil(b / 60);
      const start = hhmm(Math.floor(a / 60), a % 60);
      const end = hhmm(Math.floor(b / 60), b % 60);
      inDay.push([a, h("div", {
        class: `quiet-band c${i + 2} r${top} to${bottom}`, "data-testid": "quiet-band", "data-day": day,
        "data-start": start, "data-end": end,
      }, h("span", { class: "quiet-text", text: t("sched.quiet_band", { start, end }) }))]);
    }
    const byHour = new Map();
    for (const o of items) {
      const hour = local(o.start).hour;
      byHour.set(hour, [...(byHour.get(hour) || []), o]);
    }
    for (const [hour, list] of byHour) {
      inDay.push([hour * 60, h("ul", { class: `cal-slot c${i + 2} r${hour}` }, list.map((o) => h("li", {}, occurrence(o))))]);
    }
    nodes.push(...inDay.sort((x, y) => x[0] - y[0]).map(([, node]) => node));
    if (!items.length) nodes.push(h("p", { class: `cal-none c${i + 2}`, text: t("sched.nothing_this_day") }));
  });
  cal.replaceChildren(...nodes);
  cal.dataset.state = "ready";
  cal.dataset.count = String(shown.length);
  if (page.week.truncated) showError(new Error(t("sched.truncated")));
}

function occurrence(o) {
  const s = page.schedules.get(o.schedule);
  const at = local(o.start);
  const end = o.end ? local(o.end) : null;
  const when = end ? `${hhmm(at.hour, at.minute)}–${hhmm(end.hour, end.minute)}` : hhmm(at.hour, at.minute);
  const zones = s.zones.map(zoneName).join(", ");
  const state = !s.enabled ? t("sched.paused") : (!s.approved ? t("sched.waiting_approval") : "");
  const kind = kindOf(s);
  const attrs = {
    class: `occ kind-${kind} prio-${s.priority}${s.enabled && s.approved ? "" : " inactive"}`,
    "data-testid": "occurrence", "data-schedule": s.id, "data-start": o.start, "data-day": at.day,
    "data-time": hhmm(at.hour, at.minute), "data-kind": kind,
  };
  const body = [
    h("span", { class: "occ-time", text: when }), " ",
    h("span", { class: "occ-what", text: whatOf(s) }),
    h("span", { class: "occ-meta", text: `${zones} · ${t(`priority.${s.priority}`)}${state ? ` · ${state}` : ""}` }),
    h("span", { class: "visually-hidden", text: ` (${t(`sched.kind.${kind}`)})` }),
  ];
  if (!mayChange(s)) return h("div", attrs, ...body);
  return h("button", { type: "button", ...attrs, on: { click: () => openForm(s) } }, ...body);
}

// ---- the form ------------------------------------------------------------------------------

function errorSlot(id, field) {
  return h("p", { class: "field-error", id, "data-error-for": field, "data-testid": id });
}

function field(label, id, control, field_, hint) {
  return h("div", { class: "field", "data-for": field_ },
    h("label", { for: id, text: label }),
    hint ? h("p", { class: "hint", id: `${id}-hint`, text: hint }) : null,
    control, errorSlot(`${id}-error`, field_));
}

function described(id, hint) {
  return hint ? `${id}-hint ${id}-error` : `${id}-error`;
}

async function openForm(s) {
  page.editing = s;
  const box = $("schedule-editor");
  if (!box) return;
  api("GET", "/clips").then((r) => { // the library may have grown since the last time
    page.clips = r.clips;
    renderClipOptions();
  }).catch(() => {});
  const canEmergency = anywhere(store.user, EMERGENCY);
  const priorities = ["normal", "priority", "background", ...(canEmergency ? ["emergency"] : [])];
  const form = h("form", { id: "schedule-form", class: "schedule-form", "data-testid": "schedule-form", novalidate: true },
    h("h2", { id: "schedule-form-title", tabindex: "-1", text: s ? t("sched.edit_title", { id: s.id }) : t("sched.new_title") }),
    field(t("sched.kind"), "sf-kind", h("select", { id: "sf-kind", "data-testid": "sf-kind", "aria-describedby": "sf-kind-error" },
      KINDS.map((k) => h("option", { value: k, text: t(`sched.src.${k}`) }))), "source"),
    h("div", { class: "field", "data-kind": "tts" },
      h("label", { for: "sf-text", text: t("compose.text") }),
      h("textarea", { id: "sf-text", "data-testid": "sf-text", rows: 4, maxlength: 5000, lang: "vi", "aria-describedby": "sf-text-error" }),
      errorSlot("sf-text-error", "source.text")),
    h("div", { class: "field", "data-kind": "clip" },
      h("label", { for: "sf-clip", text: t("sched.clip") }),
      h("select", { id: "sf-clip", "data-testid": "sf-clip", "aria-describedby": "sf-clip-error" }),
      errorSlot("sf-clip-error", "source.clip")),
    h("div", { class: "field", "data-kind": "relay" },
      h("label", { for: "sf-url", text: t("sched.url") }),
      h("p", { class: "hint", id: "sf-url-hint", text: t("sched.url_hint") }),
      h("input", { id: "sf-url", type: "url", "data-testid": "sf-url", maxlength: 2000, "aria-describedby": "sf-url-hint sf-url-error" }),
      errorSlot("sf-url-error", "source.url")),
    h("div", { class: "field row", "data-kind": "tone" },
      h("div", {},
        h("label", { for: "sf-hz", text: t("sched.hz") }),
        h("input", { id: "sf-hz", type: "number", min: 25, max: 20000, value: 1000, "data-testid": "sf-hz", "aria-describedby": "sf-hz-error" }),
        errorSlot("sf-hz-error", "source.hz")),
      h("div", {},
        h("label", { for: "sf-seconds", text: t("sched.seconds") }),
        h("input", { id: "sf-seconds", type: "number", min: 1, max: 3600, value: 5, "data-testid": "sf-seconds", "aria-describedby": "sf-seconds-error" }),
        errorSlot("sf-seconds-error", "source.seconds"))),
    h("fieldset", { class: "field", "aria-describedby": "sf-zones-error" },
      h("legend", { text: t("compose.zones") }),
      h("div", { id: "sf-zones", "data-testid": "sf-zones" }),
      errorSlot("sf-zones-error", "zones")),
    field(t("compose.priority"), "sf-priority", h("select", { id: "sf-priority", "data-testid": "sf-priority", "aria-describedby": "sf-priority-error" },
      priorities.map((p) => h("option", { value: p, text: t(`priority.${p}`) }))), "priority"),
    field(t("compose.label"), "sf-label", h("input", { id: "sf-label", "data-testid": "sf-label", maxlength: 200, "aria-describedby": "sf-label-error" }), "label"),
    field(t("sched.repeat"), "sf-preset", h("select", { id: "sf-preset", "data-testid": "sf-preset", "aria-describedby": "sf-preset-error" },
      PRESETS.map((p) => h("option", { value: p, text: t(`sched.preset.${p}`) }))), "recurrence"),
    h("fieldset", { class: "field", "data-when": "weekly", "aria-describedby": "sf-days-error" },
      h("legend", { text: t("sched.days") }),
      h("div", { class: "days" }, DAYS.map((d) => h("span", { class: "day" },
        h("input", { type: "checkbox", id: `sf-day-${d}`, value: d, "data-testid": `sf-day-${d}` }),
        h("label", { for: `sf-day-${d}`, class: "inline", text: t(`sched.day.${d}`) })))),
      errorSlot("sf-days-error", "days")),
    h("div", { class: "field", "data-when": "custom" },
      h("label", { for: "sf-rrule", text: t("sched.rrule") }),
      h("p", { class: "hint", id: "sf-rrule-hint", text: t("sched.rrule_hint") }),
      h("input", { id: "sf-rrule", "data-testid": "sf-rrule", maxlength: 500, spellcheck: "false", "aria-describedby": "sf-rrule-hint sf-rrule-error" }),
      errorSlot("sf-rrule-error", "rrule")),
    h("div", { class: "field row" },
      h("div", {},
        h("label", { for: "sf-date", text: t("sched.date") }),
        h("p", { class: "hint", id: "sf-date-hint", text: t("sched.date_hint") }),
        h("input", { id: "sf-date", type: "date", "data-testid": "sf-date", required: true, "aria-describedby": "sf-date-hint sf-date-error" }),
        errorSlot("sf-date-error", "date")),
      h("div", {},
        h("span", { class: "label", id: "sf-times-title", text: t("sched.times") }),
        h("div", { id: "sf-times", class: "times", role: "group", "aria-labelledby": "sf-times-title" }),
        h("button", { type: "button", id: "sf-add-time", "data-testid": "sf-add-time", text: t("sched.add_time"), on: { click: () => { addTime(""); changed(); } } }),
        errorSlot("sf-time-error", "time"))),
    field(t("sched.duration"), "sf-duration", h("input", { id: "sf-duration", type: "number", min: 1, max: 1440, step: 1, "data-testid": "sf-duration",
      "aria-describedby": described("sf-duration", true) }), "duration_s", t("sched.duration_hint")),
    h("section", { class: "summary", "aria-labelledby": "sf-summary-title" },
      h("h3", { id: "sf-summary-title", text: t("sched.summary") }),
      h("p", { id: "sf-rule-words", "data-testid": "sf-rule-words" }),
      h("ul", { id: "sf-next", class: "plain", "data-testid": "sf-next", "data-state": "none", "aria-live": "polite" })),
    h("p", { id: "sf-approval", class: "notice", "data-testid": "sf-approval", hidden: true, text: t("sched.needs_approval") }),
    h("div", { class: "actions" },
      h("button", { type: "submit", class: "primary", id: "sf-save", "data-testid": "sf-save", text: t(s ? "sched.save" : "sched.create") }),
      h("button", { type: "button", "data-testid": "sf-cancel", text: t("sched.cancel"), on: { click: closeForm } }),
      s ? h("button", { type: "button", class: "danger", "data-testid": "sf-delete", text: t("sched.delete"), on: { click: askDelete } }) : null),
    h("div", { id: "sf-confirm", class: "notice", "data-testid": "sf-confirm", role: "alertdialog", "aria-labelledby": "sf-confirm-text", hidden: true },
      h("p", { id: "sf-confirm-text", text: s ? t("sched.delete_confirm", { what: whatOf(s) }) : "" }),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "danger", "data-testid": "sf-delete-yes", text: t("sched.delete_yes"), on: { click: doDelete } }),
        h("button", { type: "button", id: "sf-delete-no", "data-testid": "sf-delete-no", text: t("sched.cancel"), on: { click: () => { $("sf-confirm").hidden = true; $("sf-save").focus(); } } }))));
  form.addEventListener("submit", save);
  form.addEventListener("input", changed);
  form.addEventListener("change", (e) => {
    if (e.target.id === "sf-preset") presetChosen();
    changed(e);
  });
  box.replaceChildren(form);
  box.hidden = false;
  renderZonePicks(s ? s.zones : []);
  renderClipOptions();
  fill(s);
  showKind();
  showPreset();
  $("schedule-form-title").focus();
  changed();
}

function closeForm() {
  clearTimeout(page.previewTimer);
  page.previewSeq += 1;
  page.editing = null;
  const box = $("schedule-editor");
  if (box) {
    box.hidden = true;
    box.replaceChildren();
  }
}

function renderClipOptions() {
  const select = $("sf-clip");
  if (!select) return;
  const keep = select.value || (page.editing && page.editing.source.kind === "clip" ? page.editing.source.clip : "");
  const clips = page.clips || [];
  select.replaceChildren(h("option", { value: "", text: clips.length ? t("sched.clip_choose") : t("sched.clip_none") }),
    ...clips.map((c) => h("option", { value: c.id, text: `${c.name || c.id} (${Math.round(c.seconds)} s)` })));
  if (keep && !clips.some((c) => c.id === keep)) select.append(h("option", { value: keep, text: keep }));
  select.value = keep;
}

function renderZonePicks(chosen) {
  drawZonePicker($("sf-zones"), {
    prefix: "sf-zone", roles: [...OPERATE, ...EMERGENCY], why: "compose.zone_not_yours", ticked: chosen,
  });
}

function times() {
  return [...document.querySelectorAll("#sf-times input")].map((i) => i.value).filter(Boolean);
}

function addTime(value) {
  const box = $("sf-times");
  const n = box.children.length + 1;
  const id = `sf-time-${n}`;
  const row = h("div", { class: "time-row" },
    h("label", { for: id, class: "visually-hidden", text: t("sched.time_n", { n }) }),
    h("input", { type: "time", id, value, required: true, "data-testid": id, "aria-describedby": "sf-time-error" }),
    n > 1 ? h("button", { type: "button", class: "small-btn", "data-testid": `sf-time-remove-${n}`, text: t("sched.remove_time"),
      "aria-label": t("sched.remove_time_n", { n }),
      on: { click: () => { row.remove(); renumberTimes(); changed(); } } }) : null);
  box.append(row);
}

function renumberTimes() {
  [...document.querySelectorAll("#sf-times .time-row")].forEach((row, i) => {
    const input = row.querySelector("input");
    const label = row.querySelector("label");
    input.id = `sf-time-${i + 1}`;
    input.dataset.testid = `sf-time-${i + 1}`;
    label.htmlFor = input.id;
    label.textContent = t("sched.time_n", { n: i + 1 });
  });
}

function setTimes(list) {
  $("sf-times").replaceChildren();
  for (const v of list.length ? list : [""]) addTime(v);
}

function setDays(list) {
  for (const d of DAYS) $(`sf-day-${d}`).checked = list.includes(d);
}

function checkedDays() {
  return DAYS.filter((d) => $(`sf-day-${d}`).checked);
}

/** The form's fields from a schedule (or defaults for a new one). */
function fill(s) {
  const today = page.week ? local(page.week.now).day : new Date().toISOString().slice(0, 10);
  if (!s) {
    $("sf-kind").value = "tts";
    $("sf-priority").value = "normal";
    $("sf-date").value = today;
    $("sf-preset").value = "once";
    setTimes(["08:00"]);
    setDays([]);
    return;
  }
  $("sf-kind").value = s.source.kind;
  if (s.source.kind === "tts") $("sf-text").value = s.source.text;
  if (s.source.kind === "relay") $("sf-url").value = s.source.url;
  if (s.source.kind === "tone") {
    $("sf-hz").value = s.source.hz;
    $("sf-seconds").value = s.source.seconds;
  }
  $("sf-priority").value = s.priority;
  $("sf-label").value = s.label;
  $("sf-duration").value = s.duration_s ? String(Math.round(s.duration_s / 60)) : "";
  const start = s.at || s.dtstart;
  $("sf-date").value = start.slice(0, 10);
  const form = s.at ? { preset: "once", times: [start.slice(11, 16)], days: [] } : presetOf(s.rrule, start.slice(11, 16));
  $("sf-preset").value = form.preset;
  $("sf-rrule").value = s.rrule || "";
  setTimes(form.times);
  setDays(form.days);
}

/** A stored rule as one of the form's presets when it is one (the way buildRule writes it),
 * else "custom". Reading the rule, not expanding it. */
function presetOf(rule, dtstartTime) {
  const custom = { preset: "custom", times: [dtstartTime], days: [] };
  const parts = {};
  for (const p of rule.toUpperCase().split(";")) {
    const [k, v] = p.split("=");
    parts[k] = v;
  }
  const known = new Set(["FREQ", "BYDAY", "BYHOUR", "BYMINUTE", "BYSECOND"]);
  if (Object.keys(parts).some((k) => !known.has(k)) || !parts.BYHOUR || !/^\d+$/.test(parts.BYMINUTE || "0")) return custom;
  if ((parts.BYSECOND || "0") !== "0") return custom;
  const minute = Number(parts.BYMINUTE || "0");
  const hours = parts.BYHOUR.split(",").map(Number);
  if (hours.some((x) => !(x >= 0 && x < 24))) return custom;
  const list = hours.map((x) => hhmm(x, minute));
  if (parts.FREQ === "DAILY" && !parts.BYDAY) return { preset: "daily", times: list, days: [] };
  if (parts.FREQ !== "WEEKLY" || !parts.BYDAY) return custom;
  const days = parts.BYDAY.split(",");
  if (days.some((d) => !DAYS.includes(d))) return custom;
  const same = (a, b) => a.length === b.length && a.every((x) => b.includes(x));
  if (same(days, MON_SAT)) return { preset: list.join() === "06:00,17:00" ? "morning_evening" : "mon_sat", times: list, days };
  if (same(days, PRESET_DAYS.weekdays)) return { preset: "weekdays", times: list, days };
  return { preset: "weekly", times: list, days };
}

function presetChosen() {
  const preset = $("sf-preset").value;
  if (preset === "morning_evening") setTimes(["06:00", "17:00"]);
  else if (preset === "once" || preset === "custom") setTimes(times().slice(0, 1));
  if (preset === "custom" && !$("sf-rrule").value) $("sf-rrule").value = page.rule || ""; // a start for experts
  if (PRESET_DAYS[preset]) setDays(PRESET_DAYS[preset]);
  showPreset();
}

function showKind() {
  const kind = $("sf-kind").value;
  for (const el of document.querySelectorAll("#schedule-form [data-kind]")) el.hidden = el.dataset.kind !== kind;
}

function showPreset() {
  const preset = $("sf-preset").value;
  for (const el of document.querySelectorAll("#schedule-form [data-when]")) el.hidden = el.dataset.when !== preset;
  const single = preset === "once" || preset === "custom";
  $("sf-add-time").hidden = single;
  $("sf-date-hint").textContent = t(preset === "once" ? "sched.date_hint_once" : "sched.date_hint");
}

/** The form as a ScheduleIn body, or {errors} for what the form itself can tell. */
function body() {
  const errors = {};
  const kind = $("sf-kind").value;
  let source;
  if (kind === "tts") {
    source = { kind, text: $("sf-text").value };
    if (!source.text.trim()) errors["source.text"] = t("compose.need_text");
  } else if (kind === "clip") {
    source = { kind, clip: $("sf-clip").value };
    if (!source.clip) errors["source.clip"] = t("sched.need_clip");
  } else if (kind === "relay") {
    source = { kind, url: $("sf-url").value.trim() };
    if (!source.url) errors["source.url"] = t("sched.need_url");
  } else {
    source = { kind, hz: Number($("sf-hz").value), seconds: Number($("sf-seconds").value) };
  }
  const zones = chosenZones($("sf-zones"));
  if (!zones.length) errors.zones = t("compose.need_zones");
  const date = $("sf-date").value;
  if (!date) errors.date = t("sched.need_date");
  const preset = $("sf-preset").value;
  const list = [...new Set(times())].sort();
  if (!list.length) errors.time = t("sched.need_time");
  const out = { zones, priority: $("sf-priority").value, label: $("sf-label").value.trim(), source };
  const minutes = $("sf-duration").value;
  out.duration_s = minutes ? Number(minutes) * 60 : null;
  if (kind === "relay" && !minutes) errors.duration_s = t("sched.need_duration");
  if (preset === "once") {
    out.at = `${date}T${list[0]}:00`;
    out.rrule = null;
    out.dtstart = null;
  } else if (preset === "custom") {
    out.rrule = $("sf-rrule").value.trim();
    out.dtstart = `${date}T${list[0] || "00:00"}:00`;
    out.at = null;
    if (!out.rrule) errors.rrule = t("sched.need_rrule");
  } else {
    const days = preset === "weekly" ? checkedDays() : PRESET_DAYS[preset];
    if (preset === "weekly" && !days.length) errors.days = t("sched.need_days");
    const minutesOf = new Set(list.map((x) => x.slice(3)));
    if (minutesOf.size > 1) errors.time = t("sched.same_minutes");
    const hours = list.map((x) => Number(x.slice(0, 2)));
    const minute = list.length ? Number(list[0].slice(3)) : 0;
    out.rrule = [preset === "daily" ? "FREQ=DAILY" : `FREQ=WEEKLY;BYDAY=${days.join(",")}`,
      `BYHOUR=${hours.join(",")}`, `BYMINUTE=${minute}`, "BYSECOND=0"].join(";");
    out.dtstart = `${date}T00:00:00`;
    out.at = null;
    page.rule = out.rrule;
  }
  if (page.editing && page.editing.override_quiet_hours) out.override_quiet_hours = true;
  return { out, errors, words: words(preset, list, preset === "weekly" ? checkedDays() : PRESET_DAYS[preset] || [], date) };
}

/** The schedule in words, from the form's own fields. */
function words(preset, list, days, date) {
  const at = list.join(t("sched.and"));
  if (preset === "once") return t("sched.words.once", { date: date ? dayName(date) : "…", times: at || "…" });
  if (preset === "custom") return t("sched.words.custom");
  if (preset === "daily") return t("sched.words.daily", { times: at });
  return t("sched.words.weekly", { days: days.map((d) => t(`sched.day.${d}`)).join(", "), times: at });
}

/** The API's field as the form's own: the slot it is shown in (null: none on the form). */
function formField(err, preset) {
  const f = err.field || "";
  if (f === "at") return "time";
  if (f === "dtstart") return "date";
  if (f === "rrule") {
    if (preset === "custom") return "rrule";
    return err.status === 409 ? "time" : "recurrence"; // quiet hours: the times are the cause
  }
  if (f === "source.kind") return "source";
  if (["zones", "priority", "label", "duration_s", "source", "source.text", "source.clip", "source.url", "source.hz", "source.seconds"].includes(f)) return f;
  return null;
}

function showRefusal(form, err, keepFocus) {
  const slot = formField(err, $("sf-preset").value);
  const focused = document.activeElement;
  if (slot) fieldErrors(form, { [slot]: err.message });
  else {
    fieldErrors(form, null);
    showError(err);
  }
  if (keepFocus && focused && focused !== document.activeElement) focused.focus();
  return Boolean(slot);
}

function markTimes() {
  // the times share one error slot; every time input names it, so mark them all
  const bad = $("sf-time-error") && $("sf-time-error").textContent;
  for (const i of document.querySelectorAll("#sf-times input")) {
    if (bad) i.setAttribute("aria-invalid", "true");
    else i.removeAttribute("aria-invalid");
  }
}

function changed(e) {
  if (e && e.target && e.target.id === "sf-kind") showKind();
  clearTimeout(page.previewTimer);
  page.previewTimer = setTimeout(() => preview().catch(() => {}), PREVIEW_DELAY_MS);
}

/** The dry run: the next occurrences in words, or the refusal next to its field. */
async function preview() {
  const form = $("schedule-form");
  if (!form) return;
  const seq = ++page.previewSeq;
  const { out, errors, words: said } = body();
  $("sf-rule-words").textContent = said;
  const list = $("sf-next");
  if (Object.keys(errors).length) {
    list.dataset.state = "incomplete";
    list.replaceChildren(h("li", { class: "muted", text: t("sched.summary_incomplete") }));
    return;
  }
  list.dataset.state = "checking";
  try {
    const dry = await api("POST", "/schedules/preview", out);
    if (seq !== page.previewSeq) return;
    fieldErrors(form, null);
    markTimes();
    showError(null);
    list.dataset.state = "ok";
    list.replaceChildren(...dry.next.map((x) => {
      const at = local(x);
      return h("li", { "data-testid": "sf-next-item", text: `${dayName(at.day)} ${hhmm(at.hour, at.minute)}` });
    }));
    const renamed = page.editing && page.editing.approved &&
      Object.keys(changesFrom(page.editing, out)).every((k) => k === "label");
    $("sf-approval").hidden = dry.approved || renamed;
  } catch (err) {
    if (seq !== page.previewSeq || err.status === undefined) return;
    list.dataset.state = "refused";
    list.replaceChildren(h("li", { class: "muted", text: t("sched.summary_refused") }));
    showRefusal(form, err, true);
    markTimes();
  }
}

async function save(event) {
  event.preventDefault();
  const form = $("schedule-form");
  clearTimeout(page.previewTimer);
  page.previewSeq += 1;
  fieldErrors(form, null);
  showError(null);
  const { out, errors } = body();
  if (Object.keys(errors).length) {
    fieldErrors(form, errors);
    markTimes();
    return;
  }
  const button = $("sf-save");
  button.disabled = true;
  try {
    const s = page.editing;
    const sent = s ? changesFrom(s, out) : Object.fromEntries(Object.entries(out).filter(([, v]) => v !== null));
    const saved = s ? await api("PATCH", `/schedules/${s.id}`, sent) : await api("POST", "/schedules", sent);
    closeForm();
    await load();
    announce(t(s ? "sched.saved" : "sched.created", { id: saved.id }));
  } catch (err) {
    showRefusal(form, err, false);
    markTimes();
  } finally {
    if ($("sf-save")) $("sf-save").disabled = false;
  }
}

/** Only the fields the form changed: the API holds a schedule for approval again unless a
 * change is to its label or on/off switch alone, judged by the fields sent. */
function changesFrom(old, out) {
  const same = (a, b) => JSON.stringify(sorted(a ?? null)) === JSON.stringify(sorted(b ?? null));
  return Object.fromEntries(Object.entries(out).filter(([k, v]) => !same(old[k], v)));
}

function sorted(v) {
  if (Array.isArray(v) || v === null || typeof v !== "object") return v;
  return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted(v[k])]));
}

function askDelete() {
  $("sf-confirm").hidden = false;
  $("sf-delete-no").focus();
}

async function doDelete() {
  const s = page.editing;
  if (!s) return;
  try {
    await api("DELETE", `/schedules/${s.id}`);
    closeForm();
    await load();
    announce(t("sched.deleted", { id: s.id }));
  } catch (err) {
    showError(err);
  }
}

function announce(text) {
  let el = $("sched-status");
  if (!el) {
    el = h("p", { id: "sched-status", class: "status-line", role: "status", "data-testid": "sched-status" });
    $("cal").before(el);
  }
  el.textContent = text;
}
