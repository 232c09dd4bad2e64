// A map of the speakers, drawn locally as SVG from coordinates: no tiles, no fonts, nothing
// from elsewhere. Speakers are dots at their lat/lon, coloured (and labelled, for screen
// readers and print) by presence; a zone's `location` is a small square and its `boundary` an
// outline, when the zone record has them. Either may be absent: with no coordinates at all the
// map says so. Projection: equirectangular with the longitude scaled by cos(mean latitude),
// which is true to a few percent over a province.
//
// The map shows one area at a time (a select: the user's first grant by default), fitted to
// what lies in it; only the area's direct children are named on the map, so names stay
// readable at any level (a province's districts, a commune's hamlets). A part lying far from
// the rest (an island district: Côn Đảo is 180 km off the mainland of Bà Rịa – Vũng Tàu) is
// drawn in an inset in the corner, as printed maps of Vietnam do, so that the rest is not
// squeezed into a corner of its own map.
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

/** Lat/lon → SVG x, y, fitting `points` into the box (x0, y0, w, h) with `pad` around. */
function projection(points, box = { x0: 0, y0: 0, w: W, h: H }, pad = PAD) {
  const lats = points.map((p) => p.lat);
  const lons = points.map((p) => p.lon);
  const minLat = Math.min(...lats);
  const maxLat = Math.max(...lats);
  const minLon = Math.min(...lons);
  const maxLon = Math.max(...lons);
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const spanX = Math.max((maxLon - minLon) * k, 1e-4);
  const spanY = Math.max(maxLat - minLat, 1e-4);
  const scale = Math.min((box.w - 2 * pad) / spanX, (box.h - 2 * pad) / spanY);
  const offX = box.x0 + (box.w - spanX * scale) / 2;
  const offY = box.y0 + (box.h - spanY * scale) / 2;
  return (p) => [offX + (p.lon - minLon) * k * scale, offY + spanY * scale - (p.lat - minLat) * scale];
}

/** The direct child of `area` that `zoneId` lies in (`area` itself for the area's own). */
function childOf(zoneId, area) {
  let id = zoneId;
  while (id && store.parentOf.get(id) !== area && id !== area) id = store.parentOf.get(id);
  return id || area;
}

/** The children of `area` lying far from the rest: those whose centre is more than four
 * times the children's usual distance from their middle (and over 0.3°, some 30 km) away,
 * when they are a minority. `groups`: child id → its points. */
function farChildren(groups) {
  const centres = [...groups].filter(([, pts]) => pts.length).map(([id, pts]) => ({
    id, lat: pts.reduce((a, p) => a + p.lat, 0) / pts.length, lon: pts.reduce((a, p) => a + p.lon, 0) / pts.length,
  }));
  if (centres.length < 3) return new Set();
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const mid = { lat: median(centres.map((c) => c.lat)), lon: median(centres.map((c) => c.lon)) };
  const k = Math.cos(mid.lat * Math.PI / 180);
  const dist = (c) => Math.hypot(c.lat - mid.lat, (c.lon - mid.lon) * k);
  const usual = median(centres.map(dist));
  const far = centres.filter((c) => dist(c) > Math.max(4 * usual, 0.3)).map((c) => c.id);
  return new Set(far.length * 2 < centres.length ? far : []);
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

/** The corner box (w × h, 6 from the edges) that covers the fewest of `xys`. */
function emptiestCorner(xys, w, h) {
  const corners = [[W - w - 6, H - h - 6], [6, H - h - 6], [W - w - 6, 6], [6, 6]]
    .map(([x0, y0]) => ({ x0, y0, w, h }));
  const inside = (b) => xys.filter(([x, y]) => x >= b.x0 - 8 && x <= b.x0 + w + 8 && y >= b.y0 - 8 && y <= b.y0 + h + 8).length;
  return corners.reduce((best, b) => (inside(b) < inside(best) ? b : best));
}

function draw(box) {
  const area = currentScope();
  const { speakers, zones } = collect(area);
  const pointsOf = (x) => (x.p ? [x.p] : x.loc ? [x.loc, ...x.ring] : x.ring);
  const points = [...speakers, ...zones].flatMap(pointsOf);
  const picker = areaPicker(box, area);
  if (!points.length) {
    box.replaceChildren(picker || "", h("p", { class: "muted", "data-testid": "map-empty", text: t("map.no_coordinates") }));
    return;
  }
  const groups = new Map();
  const group = (zoneId) => childOf(zoneId, area);
  for (const x of speakers) groups.set(group(x.s.zone), [...(groups.get(group(x.s.zone)) || []), ...pointsOf(x)]);
  for (const x of zones) groups.set(group(x.z.id), [...(groups.get(group(x.z.id)) || []), ...pointsOf(x)]);
  const far = farChildren(groups);
  const isFar = (zoneId) => far.has(group(zoneId));
  const near = [...speakers.filter((x) => !isFar(x.s.zone)), ...zones.filter((x) => !isFar(x.z.id))].flatMap(pointsOf);
  const main = projection(near);
  const insetBox = emptiestCorner(near.map(main), W * 0.3, H * 0.36);
  const inset = far.size ? projection([...speakers.filter((x) => isFar(x.s.zone)), ...zones.filter((x) => isFar(x.z.id))].flatMap(pointsOf), insetBox, 14) : null;
  const xyOf = (zoneId) => (inset && isFar(zoneId) ? inset : main);

  const emergency = emergencyZones();
  const online = speakers.filter((x) => stateOf(x.s) === "online").length;
  const desc = t("map.summary", { n: speakers.length, online, zones: zones.length });
  const outlines = zones.filter((x) => x.ring.length).map(({ z, ring }) => svg("polygon", {
    class: "zone-boundary", points: ring.map((p) => xyOf(z.id)(p).map((v) => v.toFixed(1)).join(",")).join(" "),
  }, svg("title", { text: z.name })));
  const centres = zones.filter((x) => x.loc).map(({ z, loc }) => {
    const [x, y] = xyOf(z.id)(loc);
    return svg("g", { class: "zone-loc", "data-zone": z.id, "data-inset": isFar(z.id) ? "true" : undefined },
      svg("rect", { x: (x - 3).toFixed(1), y: (y - 3).toFixed(1), width: 6, height: 6 }),
      store.parentOf.get(z.id) === area ? svg("text", {
        // near the right edge the name ends at its square rather than running off the map
        x: (x > W * 0.75 ? x - 6 : x + 6).toFixed(1), y: (y - 6).toFixed(1),
        "text-anchor": x > W * 0.75 ? "end" : undefined, text: z.name,
      }) : null,
      svg("title", { text: z.name }));
  });
  const dots = speakers.map(({ s, p }) => {
    const [x, y] = xyOf(s.zone)(p);
    return svg("circle", {
      cx: x.toFixed(1), cy: y.toFixed(1), r: 6, class: speakerClass(s, emergency),
      "data-speaker": s.id, "data-testid": `map-speaker-${s.id}`,
    }, svg("title", { text: `${s.name || s.id} (${s.id}): ${t(`presence.${stateOf(s)}`)}` }));
  });
  const frame = inset ? svg("rect", {
    class: "map-inset", "data-testid": "map-inset", x: insetBox.x0, y: insetBox.y0, width: insetBox.w, height: insetBox.h,
  }, svg("title", { text: t("map.inset", { names: [...far].map((id) => store.zoneById.get(id)?.name || id).join(", ") }) })) : null;
  box.replaceChildren(
    picker || "",
    svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "map-desc", class: "map" },
      svg("desc", { id: "map-desc", text: desc }),
      svg("rect", { class: "map-bg", x: 0, y: 0, width: W, height: H }),
      frame, ...outlines, ...centres, ...dots),
    h("ul", { class: "legend", "aria-label": t("map.legend") },
      ["online", "offline", "unknown"].map((s) => h("li", {}, h("span", { class: `key spk-${s}`, "aria-hidden": "true" }), t(`presence.${s}`))),
      h("li", {}, h("span", { class: "key spk-on-air", "aria-hidden": "true" }), t("map.on_air")),
      h("li", {}, h("span", { class: "key spk-emergency", "aria-hidden": "true" }), t("map.emergency"))),
    h("p", { class: "muted small", "data-testid": "map-summary", text: desc }),
    inset ? h("p", { class: "muted small", "data-testid": "map-inset-note", text: t("map.inset", { names: [...far].map((id) => store.zoneById.get(id)?.name || id).join(", ") }) }) : "");
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
