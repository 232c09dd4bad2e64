// The speakers page (#/speakers): every speaker the user can see (the store's snapshot of GET
// /speakers: presence and the latest telemetry), filtered by zone and by state, with presence
// kept live from the event stream. For an operator of its zone, each speaker takes commands —
// volume, mute/unmute, test tone, reconnect — one POST /speakers/{id}/commands each, whose ack
// (done, refused with the speaker's reason, or no answer in time) shows on the speaker's row.
//
// Telemetry (volume, level, loss) comes in no event: the page reads GET /speakers again every
// POLL_MS while it is open. The table is rebuilt only when the set of speakers changes; else its
// cells change in place, so the focus and what an operator has typed in a volume box survive
// live updates. Below 720 px each row is a card (console.css: table.cards).

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { OPERATE, allowed } from "./grants.js";
import { formatNumber, formatTime, t } from "./i18n.js";
import { refreshSpeakers, store, zoneName } from "./store.js";
import { showError } from "./ui.js";

const STATES = ["online", "offline", "unknown"];
const TONE = { hz: 1000, seconds: 3 };
const POLL_MS = 10_000;
const filter = { zone: "", state: "" };
let rows = new Map(); // speaker id → {row, cells…} of the table on screen
const acks = new Map(); // speaker id → {state, text()}: the last command's outcome, kept across rebuilds
let ackOwner = ""; // the user whose commands `acks` holds: another sign-in starts afresh
let poll = 0;
const reported = new Map(); // speaker id → {volume, muted, at}: from an ack newer than its telemetry

export function render(view) {
  if (ackOwner !== store.user.name) {
    acks.clear();
    reported.clear();
    ackOwner = store.user.name;
  }
  const zones = [];
  const walk = (nodes, depth) => {
    for (const z of nodes) {
      zones.push(h("option", { value: z.id, text: `${"\u00a0\u00a0".repeat(depth)}${z.name}` }));
      walk(z.children, depth + 1);
    }
  };
  walk(store.zones, 0);
  if (filter.zone && !store.zoneById.has(filter.zone)) filter.zone = "";
  view.replaceChildren(
    h("div", { class: "page-head" },
      h("h1", { text: t("nav.speakers") }),
      h("button", { type: "button", "data-testid": "speakers-refresh", text: t("dash.refresh"),
        on: { click: () => refreshSpeakers().catch(showError) } })),
    h("div", { class: "filters", role: "group", "aria-label": t("speakers.filters") },
      h("span", { class: "field" },
        h("label", { for: "speakers-zone", text: t("speakers.zone_filter") }),
        h("select", { id: "speakers-zone", "data-testid": "speakers-zone", on: { change: onFilter } },
          h("option", { value: "", text: t("speakers.all_zones") }), zones)),
      h("span", { class: "field" },
        h("label", { for: "speakers-state", text: t("speakers.state_filter") }),
        h("select", { id: "speakers-state", "data-testid": "speakers-state", on: { change: onFilter } },
          h("option", { value: "", text: t("speakers.all_states") }),
          STATES.map((s) => h("option", { value: s, text: t(`presence.${s}`) }))))),
    h("p", { id: "speakers-count", class: "muted", "data-testid": "speakers-count", role: "status" }),
    h("div", { id: "speakers-table", "data-testid": "speakers-table" }));
  $("speakers-zone").value = filter.zone;
  $("speakers-state").value = filter.state;
  rows = new Map();
  build();
  clearInterval(poll);
  poll = setInterval(() => refreshSpeakers().catch(() => {}), POLL_MS);
}

export function update(what) {
  if (what === "snapshot" || what === "speakers") build();
  if (what === "presence") {
    for (const s of store.speakers.values()) fill(s);
    applyFilter();
  }
}

export function leave() {
  clearInterval(poll);
  poll = 0;
  rows = new Map();
}

function onFilter() {
  filter.zone = $("speakers-zone").value;
  filter.state = $("speakers-state").value;
  applyFilter();
}

function stateOf(s) {
  const state = s.presence && s.presence.state;
  return STATES.includes(state) ? state : "unknown";
}

function matches(s) {
  return (!filter.zone || s.zone === filter.zone || s.zone.startsWith(`${filter.zone}.`)) &&
    (!filter.state || stateOf(s) === filter.state);
}

function applyFilter() {
  let shown = 0;
  for (const [id, r] of rows) {
    const s = store.speakers.get(id);
    r.row.hidden = !s || !matches(s);
    if (!r.row.hidden) shown += 1;
  }
  const count = $("speakers-count");
  if (count) count.textContent = t("speakers.count", { shown, total: rows.size });
}

// ---- the table -----------------------------------------------------------------------------

const COLUMNS = ["id", "zone", "state", "volume", "level", "loss", "seen", "firmware"];

/** "id|zone" of every speaker, sorted: the table is rebuilt when this changes. */
function shape(speakers) {
  return speakers.map((s) => `${s.id}|${s.zone}`).sort().join(",");
}

function build() {
  const box = $("speakers-table");
  if (!box) return;
  if (rows.size && !store.errors.speakers && shape([...rows.values()]) === shape([...store.speakers.values()])) {
    for (const s of store.speakers.values()) fill(s);
    applyFilter();
    return;
  }
  const focused = document.activeElement && document.activeElement.dataset.testid;
  const volumes = new Map([...rows].map(([id, r]) => [id, r.volumeInput && r.volumeInput.value]));
  const speakers = [...store.speakers.values()].sort((a, b) => a.id.localeCompare(b.id));
  rows = new Map();
  if (store.errors.speakers) {
    box.replaceChildren(h("p", { class: "notice", text: t("dash.section_failed", { section: t("section.speakers"), message: store.errors.speakers }) }));
    return;
  }
  if (!speakers.length) {
    box.replaceChildren(h("p", { class: "muted", "data-testid": "speakers-empty", text: t("speakers.none") }));
    applyFilter();
    return;
  }
  const anyCommands = speakers.some((s) => allowed(store.user, OPERATE, s.zone));
  box.replaceChildren(h("table", { class: "cards speakers" },
    h("thead", {}, h("tr", {},
      COLUMNS.map((c) => h("th", { scope: "col", text: t(`speakers.col_${c}`) })),
      anyCommands ? h("th", { scope: "col", text: t("speakers.col_commands") }) : null)),
    h("tbody", {}, speakers.map((s) => row(s, anyCommands, volumes.get(s.id))))));
  for (const s of speakers) fill(s);
  applyFilter();
  if (focused) {
    const el = box.querySelector(`[data-testid="${CSS.escape(focused)}"]`);
    if (el) el.focus();
  }
}

function row(s, anyCommands, typedVolume) {
  const cell = (key, ...children) => h("td", { "data-label": t(`speakers.col_${key}`) }, ...children);
  const r = {
    id: s.id,
    zone: s.zone,
    state: h("span", { "data-testid": `speaker-state-${s.id}` }),
    volume: h("span", { "data-testid": `speaker-volume-${s.id}` }),
    level: h("span", { "data-testid": `speaker-level-${s.id}` }),
    loss: h("span", { "data-testid": `speaker-loss-${s.id}` }),
    seen: h("span", { "data-testid": `speaker-seen-${s.id}` }),
    firmware: h("span", { "data-testid": `speaker-firmware-${s.id}` }),
    ack: h("p", { class: "ack", id: `speaker-ack-${s.id}`, "data-testid": `speaker-ack-${s.id}`, role: "status", "data-state": "none" }),
  };
  const may = allowed(store.user, OPERATE, s.zone);
  let commands = null;
  if (may) {
    const label = s.name || s.id;
    r.volumeInput = h("input", {
      type: "number", id: `speaker-set-volume-${s.id}`, "data-testid": `speaker-set-volume-${s.id}`, min: 0, max: 100, step: 1,
      inputmode: "numeric", "aria-describedby": `speaker-ack-${s.id}`,
    });
    if (typedVolume) r.volumeInput.value = typedVolume;
    const volumeForm = h("form", { class: "volume-set", novalidate: true },
      h("label", { for: `speaker-set-volume-${s.id}`, text: t("speakers.volume_label", { name: label }) }),
      r.volumeInput,
      h("button", { type: "submit", "data-testid": `speaker-volume-send-${s.id}`, text: t("speakers.set_volume") }));
    volumeForm.addEventListener("submit", (e) => {
      e.preventDefault();
      const volume = Number(r.volumeInput.value);
      if (r.volumeInput.value === "" || !Number.isFinite(volume)) {
        showAck(s.id, "error", () => t("speakers.need_volume"));
        r.volumeInput.focus();
        return;
      }
      command(s.id, "set_volume", { volume });
    });
    r.mute = h("button", { type: "button", "data-testid": `speaker-mute-${s.id}`,
      on: { click: () => command(s.id, r.mute.dataset.cmd, {}) } });
    r.buttons = [
      volumeForm.querySelector("button"), r.mute,
      h("button", { type: "button", "data-testid": `speaker-tone-${s.id}`, text: t("speakers.test_tone"),
        "aria-label": t("speakers.test_tone_named", { name: label }),
        on: { click: () => command(s.id, "test_tone", { ...TONE }) } }),
      h("button", { type: "button", "data-testid": `speaker-reconnect-${s.id}`, text: t("speakers.reconnect"),
        "aria-label": t("speakers.reconnect_named", { name: label }),
        on: { click: () => command(s.id, "reconnect", {}) } }),
    ];
    commands = h("td", { class: "commands", "data-label": t("speakers.col_commands") },
      volumeForm, h("div", { class: "actions" }, r.buttons.slice(1)), r.ack);
  } else if (anyCommands) {
    commands = h("td", { class: "commands", "data-label": t("speakers.col_commands") },
      h("span", { class: "muted small", text: t("speakers.not_yours") }));
  }
  r.row = h("tr", { "data-testid": `speaker-${s.id}`, "data-speaker": s.id },
    h("th", { scope: "row", "data-label": t("speakers.col_id") },
      h("span", { class: "zname", text: s.name || s.id }), s.name ? h("span", { class: "zid", text: ` ${s.id}` }) : null),
    cell("zone", zoneName(s.zone)),
    cell("state", r.state),
    cell("volume", r.volume),
    cell("level", r.level),
    cell("loss", r.loss),
    cell("seen", r.seen),
    cell("firmware", r.firmware),
    commands);
  rows.set(s.id, r);
  const last = acks.get(s.id);
  if (last) showAck(s.id, last.state, last.text);
  return r.row;
}

/** The speaker's cells from the store (presence, telemetry). */
function fill(s) {
  const r = rows.get(s.id);
  if (!r) return;
  const state = stateOf(s);
  let tel = s.telemetry || {};
  const acked = reported.get(s.id);
  if (acked && !(tel.ts > acked.at)) tel = { ...tel, volume: acked.volume, muted: acked.muted };
  r.state.textContent = t(`presence.${state}`);
  r.state.className = `presence ${state}`;
  r.row.dataset.state = state;
  const volume = typeof tel.volume === "number" ? formatNumber(Math.round(tel.volume * 10) / 10) : "—";
  r.volume.textContent = tel.muted ? t("speakers.volume_muted", { volume }) : volume;
  r.volume.dataset.volume = typeof tel.volume === "number" ? String(tel.volume) : "";
  r.volume.dataset.muted = String(Boolean(tel.muted));
  r.level.textContent = typeof tel.level_dbfs === "number"
    ? t("speakers.dbfs", { n: formatNumber(Math.round(tel.level_dbfs * 10) / 10) }) : "—";
  r.loss.textContent = typeof tel.loss_ratio === "number"
    ? t("speakers.percent", { n: formatNumber(Math.round(tel.loss_ratio * 1000) / 10) }) : "—";
  const seen = Math.max((s.presence && s.presence.ts) || 0, tel.ts || 0);
  r.seen.textContent = seen ? formatTime(seen, true) : t("speakers.never");
  const detail = (s.presence && s.presence.detail) || {};
  r.firmware.textContent = detail.version || "—";
  if (r.mute) {
    const cmd = tel.muted ? "unmute" : "mute";
    r.mute.dataset.cmd = cmd;
    r.mute.textContent = t(`speakers.${cmd}`);
    r.mute.setAttribute("aria-label", t(`speakers.${cmd}_named`, { name: s.name || s.id }));
  }
}

// ---- commands ------------------------------------------------------------------------------

/** `text` is a function: the message is made again in the language of the moment. */
function showAck(id, state, text) {
  acks.set(id, { state, text });
  const r = rows.get(id);
  if (!r) return;
  r.ack.dataset.state = state;
  r.ack.className = `ack ${state}`;
  r.ack.textContent = text();
}

async function command(id, cmd, args) {
  const r = rows.get(id);
  if (!r || r.pending) return;
  r.pending = true;
  for (const b of r.buttons) b.disabled = true;
  const what = () => t(`speakers.cmd_${cmd}`);
  showAck(id, "sending", () => t("speakers.sending", { cmd: what() }));
  try {
    const ack = await api("POST", `/speakers/${encodeURIComponent(id)}/commands`, { cmd, args });
    if (!ack.acked) {
      showAck(id, "timeout", () => t("speakers.ack_timeout", { cmd: what(), error: ack.error || "" }));
    } else if (ack.ok) {
      if (ack.state && "volume" in ack.state) {
        // what the speaker says it is now, until a telemetry message newer than the ack
        reported.set(id, { volume: ack.state.volume, muted: ack.state.muted, at: Date.now() / 1000 });
        const s = store.speakers.get(id);
        if (s) fill(s);
      }
      showAck(id, "ok", () => t("speakers.ack_ok", { cmd: what() }));
    } else {
      showAck(id, "error", () => t("speakers.ack_error", { cmd: what(), error: ack.error || "" }));
    }
  } catch (err) {
    showAck(id, "error", () => t("speakers.ack_refused", { cmd: what(), error: err.message }));
  } finally {
    const now = rows.get(id);
    if (now) {
      now.pending = false;
      for (const b of now.buttons) b.disabled = false;
    }
  }
}
