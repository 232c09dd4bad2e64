// A map of the speakers, drawn locally as SVG from coordinates: no tiles, no fonts, nothing
// from elsewhere. Speakers are dots at their lat/lon, coloured (and labelled, for screen
// readers and print) by presence; a zone's `location` is a small square and its `boundary` an
// outline, when the zone record has them. Either may be absent: with no coordinates at all the
// map says so. Projection: equirectangular with the longitude scaled by cos(mean latitude),
// which is true to a few percent over a province.
//
// The map shows one area at a time (a select: the user's first grant by default), fitted to
// what lies in it; only the area's direct children are named on the map, so names stay
// readable at any level (a province's districts, a commune's hamlets).
//
// Coordinates are accepted as {lat, lon}, {latitude, longitude}, [lat, lon], "lat,lon" (CAP
// style), or GeoJSON (Point / Polygon, [lon, lat]).

import { h, svg } from "./dom.js";
import { t } from "./i18n.js";
import { emergenciesOnAir, store } from "./store.js";

const W = 640;
const H = 420;
const PAD = 24;

function num(x) {
  const n = typeof x === "string" ? Number(x) : x;
  return typeof n === "number" && Number.isFinite(n) ? n : null;
}

function latLon(lat, lon) {
  lat = num(lat);
  lon = num(lon);
  if (lat === null || lon === null || Math.abs(lat) > 90 || Math.abs(lon) > 180) return null;
  return { lat, lon };
}

/** One point in any accepted form, or null. */
export function toPoint(p) {
  if (!p) return null;
  if (typeof p === "string") {
    const [a, b] = p.split(",");
    return latLon(a, b);
  }
  if (Array.isArray(p)) return p.length >= 2 ? latLon(p[0], p[1]) : null;
  if (p.type === "Point" && Array.isArray(p.coordinates)) return latLon(p.coordinates[1], p.coordinates[0]);
  if ("lat" in p) return latLon(p.lat, "lon" in p ? p.lon : p.lng);
  if ("latitude" in p) return latLon(p.latitude, p.longitude);
  return null;
}

/** A ring of points in any accepted form ([] if none). */
export function toRing(b) {
  if (!b) return [];
  if (typeof b === "string") return b.trim().split(/\s+/).map(toPoint).filter(Boolean);
  if (b.type === "Polygon" && Array.isArray(b.coordinates) && Array.isArray(b.coordinates[0])) {
    return b.coordinates[0].map((c) => latLon(c[1], c[0])).filter(Boolean);
  }
  if (Array.isArray(b)) return b.map(toPoint).filter(Boolean);
  if (Array.isArray(b.points)) return toRing(b.points);
  return [];
}

let scope = null; // the zone id the map shows

function within(zone, area) {
  return zone === area || zone.startsWith(`${area}.`);
}

/** The areas the map can show: zones with children, in tree order, with their depth. */
function areas() {
  const out = [];
  const walk = (z, depth) => {
    if (z.children.length) out.push({ z, depth });
    for (const c of z.children) walk(c, depth + 1);
  };
  for (const r of store.zones) walk(r, 0);
  return out;
}

function currentScope() {
  if (scope && store.zoneById.has(scope)) return scope;
  const grant = store.user && store.user.grants.find((g) => store.zoneById.has(g.zone));
  return grant ? grant.zone : (store.zones[0] ? store.zones[0].id : "");
}

function collect(area) {
  const speakers = [];
  for (const s of store.speakers.values()) {
    const p = latLon(s.lat, s.lon);
    if (p && within(s.zone, area)) speakers.push({ s, p });
  }
  const zones = [];
  for (const z of store.zoneById.values()) {
    if (!within(z.id, area)) continue;
    const loc = toPoint(z.location);
    const ring = toRing(z.boundary);
    if (loc || ring.length >= 3) zones.push({ z, loc, ring: ring.length >= 3 ? ring : [] });
  }
  return { speakers, zones };
}

function projection(points) {
  const lats = points.map((p) => p.lat);
  const lons = points.map((p) => p.lon);
  const minLat = Math.min(...lats);
  const maxLat = Math.max(...lats);
  const minLon = Math.min(...lons);
  const maxLon = Math.max(...lons);
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const spanX = Math.max((maxLon - minLon) * k, 1e-4);
  const spanY = Math.max(maxLat - minLat, 1e-4);
  const scale = Math.min((W - 2 * PAD) / spanX, (H - 2 * PAD) / spanY);
  const offX = (W - spanX * scale) / 2;
  const offY = (H - spanY * scale) / 2;
  return (p) => [offX + (p.lon - minLon) * k * scale, H - offY - (p.lat - minLat) * scale];
}

function stateOf(s) {
  return (s.presence && s.presence.state) || "unknown";
}

function speakerClass(s, emergencyZones) {
  const b = store.onAir.get(s.zone);
  const classes = ["spk", `spk-${stateOf(s)}`];
  if (emergencyZones.has(s.zone)) classes.push("spk-emergency");
  else if (b) classes.push("spk-on-air");
  return classes.join(" ");
}

function emergencyZones() {
  return new Set(emergenciesOnAir().flatMap((e) => e.zones));
}

function areaPicker(box, area) {
  const list = areas();
  if (list.length < 2) return null;
  const select = h("select", {
    id: "map-area", "data-testid": "map-area",
    on: { change: (e) => { scope = e.target.value; render(box); } },
  }, list.map(({ z, depth }) => h("option", { value: z.id, selected: z.id === area, text: `${"– ".repeat(depth)}${z.name}` })));
  return h("div", { class: "map-area" }, h("label", { for: "map-area", text: t("map.area") }), select);
}

export function render(box) {
  const refocus = document.activeElement && document.activeElement.id === "map-area";
  draw(box);
  if (refocus) box.querySelector("#map-area").focus(); // a keyboard user keeps their place
}

function draw(box) {
  const area = currentScope();
  const { speakers, zones } = collect(area);
  const points = [...speakers.map((x) => x.p), ...zones.flatMap((x) => (x.loc ? [x.loc, ...x.ring] : x.ring))];
  const picker = areaPicker(box, area);
  if (!points.length) {
    box.replaceChildren(picker || "", h("p", { class: "muted", "data-testid": "map-empty", text: t("map.no_coordinates") }));
    return;
  }
  const xy = projection(points);
  const emergency = emergencyZones();
  const online = speakers.filter((x) => stateOf(x.s) === "online").length;
  const desc = t("map.summary", { n: speakers.length, online, zones: zones.length });
  const outlines = zones.filter((x) => x.ring.length).map(({ z, ring }) => svg("polygon", {
    class: "zone-boundary", points: ring.map((p) => xy(p).map((v) => v.toFixed(1)).join(",")).join(" "),
  }, svg("title", { text: z.name })));
  const centres = zones.filter((x) => x.loc).map(({ z, loc }) => {
    const [x, y] = xy(loc);
    return svg("g", { class: "zone-loc" },
      svg("rect", { x: (x - 3).toFixed(1), y: (y - 3).toFixed(1), width: 6, height: 6 }),
      store.parentOf.get(z.id) === area ? svg("text", { x: (x + 6).toFixed(1), y: (y - 6).toFixed(1), text: z.name }) : null,
      svg("title", { text: z.name }));
  });
  const dots = speakers.map(({ s, p }) => {
    const [x, y] = xy(p);
    return svg("circle", {
      cx: x.toFixed(1), cy: y.toFixed(1), r: 6, class: speakerClass(s, emergency),
      "data-speaker": s.id, "data-testid": `map-speaker-${s.id}`,
    }, svg("title", { text: `${s.name || s.id} (${s.id}): ${t(`presence.${stateOf(s)}`)}` }));
  });
  box.replaceChildren(
    picker || "",
    svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "map-desc", class: "map" },
      svg("desc", { id: "map-desc", text: desc }),
      svg("rect", { class: "map-bg", x: 0, y: 0, width: W, height: H }),
      ...outlines, ...centres, ...dots),
    h("ul", { class: "legend", "aria-label": t("map.legend") },
      ["online", "offline", "unknown"].map((s) => h("li", {}, h("span", { class: `key spk-${s}`, "aria-hidden": "true" }), t(`presence.${s}`))),
      h("li", {}, h("span", { class: "key spk-on-air", "aria-hidden": "true" }), t("map.on_air")),
      h("li", {}, h("span", { class: "key spk-emergency", "aria-hidden": "true" }), t("map.emergency"))),
    h("p", { class: "muted small", "data-testid": "map-summary", text: desc }));
}

/** Presence and on-air changed: recolour the dots (a new speaker waits for the next render). */
export function update(box) {
  const emergency = emergencyZones();
  for (const dot of box.querySelectorAll("circle[data-speaker]")) {
    const s = store.speakers.get(dot.dataset.speaker);
    if (!s) continue;
    dot.setAttribute("class", speakerClass(s, emergency));
    const title = dot.querySelector("title");
    if (title) title.textContent = `${s.name || s.id} (${s.id}): ${t(`presence.${stateOf(s)}`)}`;
  }
}
