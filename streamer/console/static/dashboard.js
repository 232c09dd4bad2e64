// The dashboard (#/): the zone tree with speakers online/offline and what plays per zone, what
// comes next (schedules), alerts and approvals from the live stream, relays, and a map of the
// speakers drawn here as SVG from their coordinates (no tiles, nothing from elsewhere).
//
// The tree is built once per snapshot and its status lines are updated in place on each event,
// so a keyboard user's focus and the open/closed branches survive live updates.

import { $, h } from "./dom.js";
import { currentLang, formatTime, has, t } from "./i18n.js";
import * as map from "./map.js";
import {
  emergenciesOnAir, leavesUnder, refresh, speakerCounts, store, zoneName,
} from "./store.js";
import { showError } from "./ui.js";

const closed = new Set(); // zone ids whose branch the user closed
let pending = 0;

export function render(view) {
  const refreshButton = h("button", {
    type: "button", "data-testid": "refresh", text: t("dash.refresh"),
    on: { click: () => refresh().catch(showError) },
  });
  view.replaceChildren(
    h("div", { class: "page-head" }, h("h1", { text: t("nav.dashboard") }), refreshButton),
    h("section", { id: "dash-summary", class: "summary", "aria-label": t("dash.summary") }),
    h("div", { class: "dash-grid" },
      h("section", { "aria-labelledby": "zones-title", class: "card" },
        h("h2", { id: "zones-title", text: t("dash.zones") }),
        h("div", { id: "zone-tree", "data-testid": "zone-tree" })),
      h("div", { class: "dash-side" },
        h("section", { "aria-labelledby": "next-title", class: "card" },
          h("h2", { id: "next-title", text: t("dash.next") }),
          h("div", { id: "dash-next", "data-testid": "next" })),
        h("section", { "aria-labelledby": "alerts-title", class: "card" },
          h("h2", { id: "alerts-title", text: t("dash.alerts") }),
          h("div", { id: "dash-alerts", "data-testid": "alerts" })),
        h("section", { "aria-labelledby": "relays-title", class: "card" },
          h("h2", { id: "relays-title", text: t("dash.relays") }),
          h("div", { id: "dash-relays", "data-testid": "relays" })))),
    h("section", { "aria-labelledby": "map-title", class: "card" },
      h("h2", { id: "map-title", text: t("dash.map") }),
      h("div", { id: "dash-map", "data-testid": "map" })));
  renderAll();
}

export function update(what) {
  if (what === "snapshot") {
    renderAll();
    return;
  }
  if (pending) return;
  pending = requestAnimationFrame(() => {
    pending = 0;
    if (!$("zone-tree")) return;
    renderSummary();
    updateTree();
    renderAlerts();
    renderRelays();
    map.update($("dash-map"));
  });
}

export function leave() {
  if (pending) cancelAnimationFrame(pending);
  pending = 0;
}

function renderAll() {
  if (!$("zone-tree")) return;
  renderSummary();
  renderTree();
  renderNext();
  renderAlerts();
  renderRelays();
  map.render($("dash-map"));
}

// ---- summary -------------------------------------------------------------------------------

function renderSummary() {
  let online = 0;
  for (const s of store.speakers.values()) if (s.presence && s.presence.state === "online") online += 1;
  const channels = [...store.onAir.values()];
  const playing = channels.filter(Boolean).length;
  const emergencies = emergenciesOnAir().length;
  const item = (key, value, testid, warn) => h("div", { class: warn ? "stat warn" : "stat", "data-testid": testid, "data-value": value },
    h("span", { class: "stat-value", text: value }), h("span", { class: "stat-label", text: t(key) }));
  const errors = Object.entries(store.errors).map(([section, message]) =>
    h("p", { class: "notice", text: t("dash.section_failed", { section: t(`section.${section}`), message }) }));
  $("dash-summary").replaceChildren(
    h("div", { class: "stats" },
      item("dash.speakers_online", `${online}/${store.speakers.size}`, "stat-speakers", online < store.speakers.size),
      item("dash.channels_on_air", `${playing}/${channels.length}`, "stat-channels", false),
      item("dash.emergencies", String(emergencies), "stat-emergencies", emergencies > 0),
      item("dash.alerts_firing", String(store.alerts.size), "stat-alerts", store.alerts.size > 0)),
    ...errors);
}

// ---- zone tree -----------------------------------------------------------------------------

function renderTree() {
  const box = $("zone-tree");
  if (!store.zones.length) {
    box.replaceChildren(h("p", { text: t("dash.no_zones") }));
    box.dataset.state = "empty";
    return;
  }
  box.replaceChildren(h("ul", { class: "tree" }, store.zones.map((z) => zoneItem(z, 0))));
  box.dataset.state = "loaded";
  updateTree();
}

function zoneItem(z, depth) {
  const line = [
    h("span", { class: "zname", text: z.name }),
    h("span", { class: "zid", text: z.id }),
    h("span", { class: "zstatus", "data-status-for": z.id }),
  ];
  if (!z.children.length) {
    return h("li", { "data-testid": `zone-${z.id}`, "data-zone": z.id }, h("div", { class: "zline" }, line));
  }
  const details = h("details", { open: !closed.has(z.id) && depth < 3 },
    h("summary", { class: "zline", "data-testid": `zone-toggle-${z.id}` }, line),
    h("ul", {}, z.children.map((c) => zoneItem(c, depth + 1))));
  details.addEventListener("toggle", () => {
    if (details.open) closed.delete(z.id);
    else closed.add(z.id);
  });
  return h("li", { "data-testid": `zone-${z.id}`, "data-zone": z.id }, details);
}

function priorityWord(p) {
  return p ? t(`priority.${p}`) : "";
}

function statusOf(zone) {
  const c = speakerCounts(zone.id);
  const parts = [];
  const counts = [t("dash.count_online", { n: c.online })];
  if (c.offline) counts.push(t("dash.count_offline", { n: c.offline }));
  if (c.unknown) counts.push(t("dash.count_unknown", { n: c.unknown }));
  const spk = c.total === 0 ? t("dash.no_speakers") : t("dash.speaker_counts", { counts: counts.join(", ") });
  parts.push(h("span", { class: c.total && c.online < c.total ? "spk-count some-off" : "spk-count", text: spk }));
  const leaves = leavesUnder(zone);
  const playing = leaves.map((l) => store.onAir.get(l.id)).filter(Boolean);
  const emergency = playing.find((b) => b.emergency);
  let air;
  if (zone.channel && !zone.children.length) {
    const b = store.onAir.get(zone.id);
    air = b ? t("dash.playing", { label: b.label || `#${b.id}`, priority: priorityWord(b.priority) }) : t("dash.silent");
  } else if (playing.length) {
    const ids = new Set(playing.map((b) => b.id));
    air = ids.size === 1 && playing.length === leaves.length
      ? t("dash.playing", { label: playing[0].label || `#${playing[0].id}`, priority: priorityWord(playing[0].priority) })
      : t("dash.playing_in", { n: playing.length, of: leaves.length });
  } else {
    air = t("dash.silent");
  }
  parts.push(h("span", { class: emergency ? "air emergency" : (playing.length ? "air on" : "air"), text: air }));
  return { parts, counts: c, playing: playing.length, emergency: Boolean(emergency) };
}

function updateTree() {
  for (const el of document.querySelectorAll("[data-status-for]")) {
    const zone = store.zoneById.get(el.dataset.statusFor);
    if (!zone) continue;
    const s = statusOf(zone);
    el.replaceChildren(...s.parts);
    const li = el.closest("li");
    li.dataset.online = String(s.counts.online);
    li.dataset.offline = String(s.counts.offline);
    li.dataset.unknown = String(s.counts.unknown);
    li.dataset.onAir = String(s.playing);
    li.classList.toggle("has-emergency", s.emergency);
  }
}

// ---- what comes next -----------------------------------------------------------------------

function renderNext() {
  const box = $("dash-next");
  const upcoming = store.schedules.filter((s) => s.next && s.enabled && s.approved)
    .map((s) => ({ s, at: Date.parse(s.next) / 1000 }))
    .sort((a, b) => a.at - b.at).slice(0, 6);
  box.replaceChildren(upcoming.length
    ? h("ul", { class: "plain" }, upcoming.map(({ s, at }) => h("li", {},
      h("strong", { text: formatTime(at, true) }), " ",
      s.label || t(`source.${s.source.kind}`), " — ",
      h("span", { class: "muted", text: s.zones.map(zoneName).join(", ") }))))
    : h("p", { class: "muted", text: t("dash.nothing_next") }));
}

// ---- alerts and approvals ------------------------------------------------------------------

function renderAlerts() {
  const box = $("dash-alerts");
  const items = [];
  for (const a of store.alerts.values()) {
    items.push(h("li", { class: "alert", "data-testid": "alert" },
      h("strong", { text: has(`alert.${a.name}`) ? t(`alert.${a.name}`) : a.name }), " ", alertDetail(a),
      a.zones && a.zones.length ? h("span", { class: "muted", text: ` (${a.zones.map(zoneName).join(", ")})` }) : ""));
  }
  for (const a of store.approvals.values()) {
    items.push(h("li", { "data-testid": "approval" },
      h("strong", { text: t("dash.waiting_approval") }), " ", a.label || `#${a.id}`,
      h("span", { class: "muted", text: ` (${(a.zones || []).map(zoneName).join(", ")})` })));
  }
  box.replaceChildren(items.length ? h("ul", { class: "plain" }, items)
    : h("p", { class: "muted", text: t("dash.no_alerts") }));
}

/** What an alert is about, in the console's language: the server's summary is English, so
 * other languages name its subject (a zone by its name, a relay by its id) instead. */
function alertDetail(a) {
  if (currentLang() === "en" || !has(`alert.${a.name}`)) return a.summary || "";
  return a.subject ? zoneName(a.subject) : "";
}

// ---- relays --------------------------------------------------------------------------------

function relayAlert(id) {
  for (const a of store.alerts.values()) if (a.name === "relay_offline" && a.subject === id) return a;
  return null;
}

function renderRelays() {
  const box = $("dash-relays");
  if (!store.relays.length) {
    box.replaceChildren(h("p", { class: "muted", text: t("dash.no_relays") }));
    return;
  }
  const rows = store.relays.map((r) => {
    const alert = relayAlert(r.id);
    const state = r.presence && r.presence.state;
    const health = alert ? t("dash.relay_alert", { summary: currentLang() === "en" ? alert.summary || alert.name : t("alert.relay_offline").replace(/:$/, "") })
      : state ? t(`presence.${state}`) : t("dash.relay_no_alert");
    return h("tr", { "data-testid": `relay-${r.id}`, class: alert || state === "offline" ? "bad" : "" },
      h("th", { scope: "row", text: r.id }),
      h("td", { text: r.zone ? zoneName(r.zone) : "—" }),
      h("td", { text: health }));
  });
  box.replaceChildren(h("table", {},
    h("thead", {}, h("tr", {},
      h("th", { scope: "col", text: t("dash.relay") }),
      h("th", { scope: "col", text: t("dash.relay_zone") }),
      h("th", { scope: "col", text: t("dash.relay_health") }))),
    h("tbody", {}, rows)),
  h("p", { class: "muted small", text: t("dash.relay_note") }));
}
