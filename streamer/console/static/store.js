// What the console knows about the user's zones: a REST snapshot (zones, speakers, channels
// with what plays, broadcasts, relays, schedules), kept current by the event stream. Pages
// read it and subscribe; nothing here touches the DOM.
//
// What plays where is per leaf zone (a channel): `onAir` maps a leaf zone id to a small
// {id, label, priority, kind, started, emergency} or null, from GET /channels + /broadcasts,
// then from "onair" events. A section whose call failed keeps an error, so a page can show
// the rest and say what is missing.

import { api } from "./api.js";

export const store = {
  user: null,
  zones: [], // roots of the visible tree (ZoneNode)
  zoneById: new Map(), // id → ZoneNode
  parentOf: new Map(), // id → parent id
  speakers: new Map(), // id → SpeakerOut
  onAir: new Map(), // leaf zone id → on-air broadcast or null
  relays: [],
  schedules: [],
  reach: new Map(), // broadcast id → {confirmed, expected}
  approvals: new Map(), // broadcast id → approval event
  alerts: new Map(), // name|zones → alert event
  errors: {}, // section → message
  loaded: false,
  listeners: new Set(),
};

export function subscribe(fn) {
  store.listeners.add(fn);
  return () => store.listeners.delete(fn);
}

function changed(what) {
  for (const fn of store.listeners) fn(what);
}

/** The small on-air form of a Broadcast record. */
export function onAirOf(b) {
  return {
    id: b.id, label: b.label, priority: b.priority, kind: (b.source && b.source.kind) || "",
    started: b.started, emergency: b.priority === "emergency" || Boolean(b.emergency),
  };
}

export function clear() {
  store.user = null;
  store.zones = [];
  store.zoneById.clear();
  store.parentOf.clear();
  store.speakers.clear();
  store.onAir.clear();
  store.relays = [];
  store.schedules = [];
  store.reach.clear();
  store.approvals.clear();
  store.alerts.clear();
  store.errors = {};
  store.loaded = false;
}

function indexZones(nodes, parent) {
  for (const z of nodes) {
    store.zoneById.set(z.id, z);
    if (parent) store.parentOf.set(z.id, parent);
    indexZones(z.children, z.id);
  }
}

async function section(name, call) {
  try {
    const value = await call();
    delete store.errors[name];
    return value;
  } catch (err) {
    if (err.status === 401) throw err;
    store.errors[name] = err.message;
    return null;
  }
}

/** Load everything from the REST API (at sign-in, on "refresh", after the stream was away). */
export async function refresh() {
  const [zones, speakers, channels, broadcasts, relays, schedules] = await Promise.all([
    section("zones", () => api("GET", "/zones")),
    section("speakers", () => api("GET", "/speakers")),
    section("channels", () => api("GET", "/channels")),
    section("broadcasts", () => api("GET", "/broadcasts?limit=200")),
    section("relays", () => api("GET", "/relays")),
    section("schedules", () => api("GET", "/schedules")),
  ]);
  if (zones) {
    store.zones = zones.zones;
    store.zoneById.clear();
    store.parentOf.clear();
    indexZones(store.zones, null);
  }
  if (speakers) {
    store.speakers.clear();
    for (const s of speakers.speakers) store.speakers.set(s.id, s);
  }
  if (channels) {
    const byId = new Map((broadcasts ? broadcasts.broadcasts : []).map((b) => [b.id, b]));
    const missing = [...new Set(channels.channels.map((c) => c.on_air).filter((id) => id && !byId.has(id)))];
    for (const id of missing) {
      const b = await section("broadcasts", () => api("GET", `/broadcasts/${id}`));
      if (b) byId.set(id, b);
    }
    store.onAir.clear();
    for (const c of channels.channels) {
      const b = c.on_air ? byId.get(c.on_air) : null;
      const unknown = { id: c.on_air, label: "", priority: "", kind: "", started: null, emergency: false };
      store.onAir.set(c.id, b ? onAirOf(b) : (c.on_air ? unknown : null));
    }
  }
  if (relays) store.relays = relays.relays;
  if (schedules) store.schedules = schedules.schedules;
  store.loaded = true;
  changed("snapshot");
}

/** One event from the stream (docs/api.md, the event stream). */
export function apply(name, data) {
  switch (name) {
    case "onair":
      store.onAir.set(data.zone, data.broadcast || null);
      break;
    case "presence": {
      const s = store.speakers.get(data.speaker);
      if (!s) return; // not in the snapshot: it shows at the next refresh
      s.presence = { ...(s.presence || {}), state: data.online ? "online" : "offline" };
      break;
    }
    case "reach":
      store.reach.set(data.broadcast, { confirmed: data.confirmed, expected: data.expected });
      break;
    case "approval":
      if (data.state === "waiting") store.approvals.set(data.id, data);
      else store.approvals.delete(data.id);
      break;
    case "emergency": // what plays comes in "onair" events; this one only wakes the pages
      break;
    case "lexicon": // an admin changed a reading: the lexicon page reads it again
      break;
    case "zones": // an admin edited the tree: zone ids, channels, speakers and schedules moved
      refresh().catch(() => {}); // a refresh that fails shows in its sections' errors
      return;
    case "alert": {
      const key = `${data.name}|${data.subject || (data.zones || []).join(",")}`;
      if (data.state === "firing") store.alerts.set(key, data);
      else store.alerts.delete(key);
      break;
    }
    default:
      return;
  }
  changed(name);
}

// ---- derived views -------------------------------------------------------------------------

export function isLeaf(zone) {
  return zone.children.length === 0 && zone.channel;
}

export function leavesUnder(zone) {
  if (zone.channel) return [zone];
  return zone.children.flatMap(leavesUnder);
}

/** Speakers of `zoneId` and below, counted by presence state. */
export function speakerCounts(zoneId) {
  const counts = { online: 0, offline: 0, unknown: 0, total: 0 };
  for (const s of store.speakers.values()) {
    if (s.zone !== zoneId && !s.zone.startsWith(`${zoneId}.`)) continue;
    const state = (s.presence && s.presence.state) || "unknown";
    counts[state in counts ? state : "unknown"] += 1;
    counts.total += 1;
  }
  return counts;
}

/** Emergencies on air now, each with the leaf zones it plays in: [{id, label, zones}]. */
export function emergenciesOnAir() {
  const playing = new Map();
  for (const [zone, b] of store.onAir) {
    if (!b || !b.emergency) continue;
    const e = playing.get(b.id) || { id: b.id, label: b.label, zones: [] };
    e.zones.push(zone);
    playing.set(b.id, e);
  }
  return [...playing.values()];
}

export function zoneName(id) {
  const z = store.zoneById.get(id);
  return z ? z.name : id;
}

/** Whether a broadcast to `zoneId` waits for an approver: approval is asked on the zone, an
 * ancestor, or a zone below it (any leaf it reaches). */
export function needsApproval(zoneId) {
  for (let id = zoneId; id; id = store.parentOf.get(id)) {
    const z = store.zoneById.get(id);
    if (z && z.requires_approval) return true;
  }
  const below = (z) => z.children.some((c) => c.requires_approval || below(c));
  const z = store.zoneById.get(zoneId);
  return Boolean(z && below(z));
}

/** The speakers alone, again (GET /speakers): their telemetry comes in no event, so a page that
 * shows it reads them now and then; its listeners hear "speakers". */
export async function refreshSpeakers() {
  const data = await section("speakers", () => api("GET", "/speakers"));
  if (!data) return;
  store.speakers.clear();
  for (const s of data.speakers) store.speakers.set(s.id, s);
  changed("speakers");
}
