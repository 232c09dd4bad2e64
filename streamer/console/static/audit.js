// The audit log (#/audit): who did what, when and where, newest first, as GET /audit gives it
// to this user (entries touching zones they can see; an admin of the province also sees those
// with no zone). Filters are the API's own (user, action, zone, outcome), so what the page
// shows is exactly what the API would; "older" follows the API's `next` cursor.

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { formatTime, has, t } from "./i18n.js";
import { store, zoneName } from "./store.js";
import { fieldErrors, showError } from "./ui.js";

const PAGE = 50;
const OUTCOMES = ["ok", "denied", "skipped", "throttled"];
let next = null;
let serial = 0;

export function render(view) {
  const zones = [...store.zoneById.values()];
  const form = h("form", { id: "audit-filters", class: "filters", "data-testid": "audit-filters", novalidate: true },
    filter("user", h("input", { id: "audit-user", "data-testid": "audit-user", maxlength: 64, autocapitalize: "none", spellcheck: "false", "aria-describedby": "audit-user-error" })),
    filter("action", h("input", { id: "audit-action", "data-testid": "audit-action", maxlength: 64, autocapitalize: "none", spellcheck: "false", "aria-describedby": "audit-action-error" })),
    filter("zone", h("select", { id: "audit-zone", "data-testid": "audit-zone", "aria-describedby": "audit-zone-error" },
      h("option", { value: "", text: t("audit.any") }),
      zones.map((z) => h("option", { value: z.id, text: `${z.name} (${z.id})` })))),
    filter("outcome", h("select", { id: "audit-outcome", "data-testid": "audit-outcome", "aria-describedby": "audit-outcome-error" },
      h("option", { value: "", text: t("audit.any") }),
      OUTCOMES.map((o) => h("option", { value: o, text: t(`audit.outcome_${o}`) })))),
    h("p", { class: "actions" },
      h("button", { type: "submit", class: "primary", "data-testid": "audit-apply", text: t("audit.apply") }), " ",
      h("button", { type: "button", "data-testid": "audit-clear", text: t("audit.clear"), on: { click: clearFilters } })));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    load(false);
  });
  view.replaceChildren(
    h("h1", { text: t("nav.audit") }),
    h("p", { class: "hint", text: t("audit.hint") }),
    form,
    h("div", { class: "table-wrap" },
      h("table", { class: "audit", "data-testid": "audit-table" },
        h("caption", { class: "visually-hidden", text: t("nav.audit") }),
        h("thead", {}, h("tr", {}, ["time", "user", "action", "target", "zones", "outcome", "detail"].map(
          (c) => h("th", { scope: "col", text: t(`audit.col_${c}`) })))),
        h("tbody", { id: "audit-rows" }))),
    h("p", { id: "audit-state", class: "muted", role: "status", "data-testid": "audit-state" }),
    h("button", { type: "button", id: "audit-more", "data-testid": "audit-more", hidden: true, text: t("audit.more"), on: { click: () => load(true) } }));
  load(false);
}

function filter(name, control) {
  return h("div", { class: "field" },
    h("label", { for: control.id, text: t(`audit.${name}`) }),
    control,
    h("p", { class: "field-error", id: `audit-${name}-error`, "data-error-for": name }));
}

function clearFilters() {
  for (const id of ["audit-user", "audit-action", "audit-zone", "audit-outcome"]) $(id).value = "";
  load(false);
}

async function load(more) {
  const form = $("audit-filters");
  const q = new URLSearchParams({ limit: String(PAGE) });
  for (const name of ["user", "action", "zone", "outcome"]) {
    const v = $(`audit-${name}`).value.trim();
    if (v) q.set(name, v);
  }
  if (more && next) q.set("before", next);
  const mine = ++serial;
  fieldErrors(form, null);
  showError(null);
  $("audit-state").textContent = t("app.loading");
  let data;
  try {
    data = await api("GET", `/audit?${q}`);
  } catch (err) {
    if (mine !== serial || !$("audit-rows")) return;
    $("audit-state").textContent = "";
    if (!fieldErrors(form, err)) showError(err);
    return;
  }
  if (mine !== serial || !$("audit-rows")) return;
  next = data.next || null;
  const rows = data.entries.map(row);
  if (more) $("audit-rows").append(...rows);
  else $("audit-rows").replaceChildren(...rows);
  const shown = $("audit-rows").children.length;
  $("audit-state").textContent = shown ? t("audit.shown", { n: shown }) : t("audit.none");
  $("audit-state").dataset.count = String(shown);
  $("audit-more").hidden = !next;
}

function row(e) {
  const detail = Object.keys(e.detail || {}).length ? JSON.stringify(e.detail) : "";
  return h("tr", { "data-testid": "audit-row", "data-id": e.id, "data-action": e.action, "data-outcome": e.outcome, class: e.outcome === "ok" ? "" : "bad" },
    h("td", { text: formatTime(e.ts, true) }),
    h("td", { text: e.user }),
    h("td", { text: e.action }),
    h("td", { text: e.target }),
    h("td", { text: e.zones.map(zoneName).join(", ") }),
    h("td", { text: has(`audit.outcome_${e.outcome}`) ? t(`audit.outcome_${e.outcome}`) : e.outcome }),
    h("td", { class: "detail", text: detail }));
}
