// Reports (#/reports): airtime minutes per zone per local day, and speaker availability, from
// GET /reports/broadcast-minutes and /reports/availability, drawn as bar charts (SVG, drawn
// here: no chart library) with the same figures in a table below each for screen readers,
// and each exported as the API's own CSV (fetched with the user's token, then saved).

import { api, authHeaders, API } from "./api.js";
import { $, h, svg } from "./dom.js";
import { formatNumber, t } from "./i18n.js";
import { leavesUnder, store, zoneName } from "./store.js";
import { fieldErrors, showError } from "./ui.js";

const TIME_ZONE = "Asia/Ho_Chi_Minh";
const SERIES = 8; // colours in console.css (.series-0 … .series-7); more zones share them
const REPORTS = [
  { key: "minutes", path: "/reports/broadcast-minutes", value: (r) => r.minutes, max: (v) => Math.max(...v) || 1, format: (v) => formatNumber(Math.round(v * 10) / 10) },
  { key: "availability", path: "/reports/availability", value: (r) => r.availability * 100, max: () => 100, format: (v) => `${formatNumber(Math.round(v * 10) / 10)} %` },
];
let serial = 0;

/** A local day (YYYY-MM-DD in Asia/Ho_Chi_Minh) `back` days before today. */
function localDay(back) {
  const d = new Date(Date.now() - back * 86400_000);
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en", {
    timeZone: TIME_ZONE, year: "numeric", month: "2-digit", day: "2-digit",
  }).formatToParts(d).map((p) => [p.type, p.value]));
  return `${parts.year}-${parts.month}-${parts.day}`;
}

export function render(view) {
  const form = h("form", { id: "reports-form", class: "filters", "data-testid": "reports-form", novalidate: true },
    field("from", h("input", { type: "date", id: "reports-from", "data-testid": "reports-from", value: localDay(6), required: true, "aria-describedby": "reports-from-error" })),
    field("to", h("input", { type: "date", id: "reports-to", "data-testid": "reports-to", value: localDay(0), "aria-describedby": "reports-to-error" })),
    field("zone", h("select", { id: "reports-zone", "data-testid": "reports-zone", "aria-describedby": "reports-zone-error" },
      h("option", { value: "", text: t("reports.my_zones") }),
      [...store.zoneById.values()].map((z) => h("option", { value: z.id, text: `${z.name} (${z.id})` })))),
    field("group", h("select", { id: "reports-group", "data-testid": "reports-group", "aria-describedby": "reports-group-error" },
      h("option", { value: "zone", text: t("reports.group_zone") }),
      h("option", { value: "leaf", text: t("reports.group_leaf") }))),
    h("p", { class: "actions" }, h("button", { type: "submit", class: "primary", "data-testid": "reports-show", text: t("reports.show") })));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    load();
  });
  view.replaceChildren(h("h1", { text: t("nav.reports") }), h("p", { class: "hint", text: t("reports.hint") }), form,
    ...REPORTS.map((r) => h("section", { class: "card report", id: `report-${r.key}`, "data-testid": `report-${r.key}`, "aria-labelledby": `report-${r.key}-title` },
      h("div", { class: "page-head" },
        h("h2", { id: `report-${r.key}-title`, text: t(`reports.${r.key}`) }),
        h("button", { type: "button", "data-testid": `report-${r.key}-csv`, text: t("reports.csv"), on: { click: () => exportCsv(r) } })),
      h("div", { class: "report-body", id: `report-${r.key}-body` }))));
  load();
}

function field(name, control) {
  return h("div", { class: "field" },
    h("label", { for: control.id, text: t(`reports.${name}`) }),
    control,
    h("p", { class: "field-error", id: `reports-${name}-error`, "data-error-for": name === "from" ? "from_" : name }));
}

function query(format) {
  const q = new URLSearchParams({ from: $("reports-from").value, group: $("reports-group").value, format });
  if ($("reports-to").value) q.set("to", $("reports-to").value);
  if ($("reports-zone").value) q.set("zone", $("reports-zone").value);
  return q;
}

async function load() {
  const form = $("reports-form");
  fieldErrors(form, null);
  showError(null);
  const mine = ++serial;
  for (const r of REPORTS) {
    let data;
    try {
      data = await api("GET", `${r.path}?${query("json")}`);
    } catch (err) {
      if (mine !== serial || !$("reports-form")) return;
      $(`report-${r.key}-body`).replaceChildren();
      if (!fieldErrors(form, err)) showError(err);
      return;
    }
    if (mine !== serial || !$("reports-form")) return;
    $(`report-${r.key}-body`).replaceChildren(...draw(r, data));
    $(`report-${r.key}`).dataset.rows = String(data.rows.length);
  }
}

/** Rows → {days, zones, value(zone, day)}: a zone's value per day (minutes over priorities
 * are added up), for every zone the report covers. */
function pivot(r, data) {
  const days = [];
  for (let d = new Date(`${data.first_day}T00:00:00Z`); d <= new Date(`${data.last_day}T00:00:00Z`); d = new Date(d.getTime() + 86400_000)) {
    days.push(d.toISOString().slice(0, 10));
  }
  const cells = new Map();
  for (const row of data.rows) {
    const key = `${row.zone}|${row.day}`;
    cells.set(key, (cells.get(key) || 0) + r.value(row));
  }
  // every zone of the report, those with nothing that day too: a silent commune is news
  const expected = data.group === "zone" ? data.zones : data.zones.flatMap((id) => {
    const z = store.zoneById.get(id);
    return z ? leavesUnder(z).map((leaf) => leaf.id) : [id];
  });
  const zones = [...new Set([...expected, ...data.rows.map((row) => row.zone)])];
  return { days, zones, value: (z, d) => cells.get(`${z}|${d}`) || 0 };
}

function draw(r, data) {
  const { days, zones, value } = pivot(r, data);
  if (!zones.length) return [h("p", { "data-testid": `report-${r.key}-empty`, text: t("reports.none") })];
  const all = zones.flatMap((z) => days.map((d) => value(z, d)));
  return [chart(r, days, zones, value, r.max(all)), legend(zones), table(r, days, zones, value)];
}

function chart(r, days, zones, value, max) {
  const W = 640;
  const H = 220;
  const left = 44;
  const bottom = 24;
  const slot = (W - left) / days.length;
  const bar = Math.max(2, Math.min(28, (slot - 6) / zones.length));
  const y = (v) => H - bottom - (v / max) * (H - bottom - 10);
  const parts = [svg("rect", { class: "chart-bg", x: left, y: 0, width: W - left, height: H - bottom })];
  for (const f of [0, 0.5, 1]) {
    parts.push(svg("line", { class: "chart-grid", x1: left, x2: W, y1: y(max * f), y2: y(max * f) }),
      svg("text", { class: "chart-axis", x: left - 4, y: y(max * f) + 4, "text-anchor": "end" }, r.format(max * f)));
  }
  days.forEach((d, i) => {
    const x0 = left + i * slot + (slot - bar * zones.length) / 2;
    parts.push(svg("text", { class: "chart-axis", x: left + (i + 0.5) * slot, y: H - 6, "text-anchor": "middle" }, d.slice(5)));
    zones.forEach((z, j) => {
      const v = value(z, d);
      parts.push(svg("rect", {
        class: `chart-bar series-${j % SERIES}`, x: x0 + j * bar, y: y(v), width: Math.max(1, bar - 1), height: Math.max(0, H - bottom - y(v)),
        "data-zone": z, "data-day": d, "data-value": v.toFixed(3),
      }, svg("title", {}, `${zoneName(z)} · ${d}: ${r.format(v)}`)));
    });
  });
  return svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": t(`reports.${r.key}`), "data-testid": `report-${r.key}-chart` }, ...parts);
}

function legend(zones) {
  return h("ul", { class: "legend" }, zones.map((z, j) => h("li", {},
    h("span", { class: `swatch series-${j % SERIES}`, "aria-hidden": "true" }), zoneName(z))));
}

function table(r, days, zones, value) {
  return h("div", { class: "table-wrap" }, h("table", { "data-testid": `report-${r.key}-table` },
    h("caption", { text: t(`reports.${r.key}_table`) }),
    h("thead", {}, h("tr", {}, h("th", { scope: "col", text: t("reports.zone") }), days.map((d) => h("th", { scope: "col", text: d.slice(5) })))),
    h("tbody", {}, zones.map((z) => h("tr", { "data-zone": z },
      h("th", { scope: "row", text: zoneName(z) }),
      days.map((d) => h("td", { "data-day": d, text: r.format(value(z, d)) })))))));
}

async function exportCsv(r) {
  showError(null);
  const res = await fetch(`${API}${r.path}?${query("csv")}`, { headers: authHeaders(), cache: "no-store" });
  if (!res.ok) {
    const data = await res.json().catch(() => ({}));
    showError(new Error(data.error || `HTTP ${res.status}`));
    return;
  }
  const name = (/filename="([^"]+)"/.exec(res.headers.get("Content-Disposition") || "") || [])[1] || `${r.key}.csv`;
  const url = URL.createObjectURL(new Blob([await res.text()], { type: "text/csv" }));
  const a = h("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
