// E-boards and bulletins from above (#/board): the bulletins the central system sent that wait
// for an operator (GET /inbound?state=pending; air or reject each: POST /inbound/{id}), the
// items the boards show now (GET /board/items; take one down), and for operators a form to
// post a text-only item on the boards of chosen zones (POST /board/items).

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { OPERATE, anywhere } from "./grants.js";
import { formatTime, t } from "./i18n.js";
import { zoneName } from "./store.js";
import { store } from "./store.js";
import { fieldErrors, showError } from "./ui.js";
import { chosenZones, drawZonePicker } from "./zonepick.js";

export function render(view) {
  const mayPost = anywhere(store.user, OPERATE);
  view.replaceChildren(
    h("div", { class: "page-head" },
      h("h1", { text: t("nav.board") }),
      h("button", { type: "button", "data-testid": "board-reload", text: t("dash.refresh"), on: { click: load } })),
    h("section", { class: "card", "aria-labelledby": "inbound-title" },
      h("h2", { id: "inbound-title", text: t("board.inbound") }),
      h("p", { class: "hint", text: t("board.inbound_hint") }),
      h("div", { id: "inbound-list", "data-testid": "inbound-list", "aria-live": "polite" },
        h("p", { class: "loading", text: t("app.loading") }))),
    mayPost ? postForm() : null,
    h("section", { class: "card", "aria-labelledby": "items-title" },
      h("h2", { id: "items-title", text: t("board.items") }),
      h("div", { id: "board-items", "data-testid": "board-items", "aria-live": "polite" },
        h("p", { class: "loading", text: t("app.loading") }))));
  if (mayPost) drawZonePicker($("board-zones"), { prefix: "board-zone", roles: OPERATE, why: "compose.zone_not_yours" });
  load();
}

export function update(what) {
  if (what === "snapshot") drawZonePicker($("board-zones"), { prefix: "board-zone", roles: OPERATE, why: "compose.zone_not_yours" });
}

function postForm() {
  const level = (v) => h("option", { value: v, text: t(`priority.${v}`) });
  return h("form", { id: "board-form", class: "card", "data-testid": "board-form", novalidate: true, on: { submit: post } },
    h("h2", { text: t("board.post") }),
    h("fieldset", {}, h("legend", { text: t("compose.zones") }),
      h("div", { id: "board-zones", "data-testid": "board-zones" }),
      h("p", { id: "board-err-zones", class: "field-error", "data-error-for": "zones" })),
    h("div", { class: "field" },
      h("label", { for: "board-title", text: t("board.title") }),
      h("input", { id: "board-title", "data-testid": "board-title", maxlength: 200, "aria-describedby": "board-err-title" }),
      h("p", { id: "board-err-title", class: "field-error", "data-error-for": "title" })),
    h("div", { class: "field" },
      h("label", { for: "board-body", text: t("board.body") }),
      h("textarea", { id: "board-body", "data-testid": "board-body", rows: 4, maxlength: 5000, "aria-describedby": "board-err-body" }),
      h("p", { id: "board-err-body", class: "field-error", "data-error-for": "body" })),
    h("div", { class: "field" },
      h("label", { for: "board-level", text: t("compose.priority") }),
      h("select", { id: "board-level", "data-testid": "board-level" }, level("normal"), level("priority"))),
    h("div", { class: "field" },
      h("label", { for: "board-hours", text: t("board.hours") }),
      h("input", { id: "board-hours", "data-testid": "board-hours", type: "number", min: 1, max: 720, value: 24, "aria-describedby": "board-err-expires_s" }),
      h("p", { id: "board-err-expires_s", class: "field-error", "data-error-for": "expires_s" })),
    h("p", { class: "actions" }, h("button", { type: "submit", class: "primary", "data-testid": "board-submit", text: t("board.submit") })),
    h("p", { id: "board-err", class: "field-error", role: "status", "data-testid": "board-result", "data-error-for": "" }));
}

async function post(event) {
  event.preventDefault();
  const form = $("board-form");
  const zones = chosenZones($("board-zones"));
  if (!zones.length) {
    fieldErrors(form, { zones: t("compose.need_zones") });
    return;
  }
  const hours = Number($("board-hours").value || 24);
  try {
    await api("POST", "/board/items", {
      zones, title: $("board-title").value.trim(), body: $("board-body").value.trim(),
      level: $("board-level").value, expires_s: Math.round(hours * 3600),
    });
    fieldErrors(form, null);
    $("board-title").value = "";
    $("board-body").value = "";
    $("board-err").textContent = t("board.posted");
    await load();
  } catch (err) {
    if (!fieldErrors(form, err)) showError(err);
  }
}

async function load() {
  let inbound, items;
  try {
    [inbound, items] = await Promise.all([api("GET", "/inbound?state=pending"), api("GET", "/board/items")]);
  } catch (err) {
    showError(err);
    return;
  }
  if (!$("inbound-list")) return; // the page was left
  const list = $("inbound-list");
  list.dataset.count = String(inbound.bulletins.length);
  list.replaceChildren(...(inbound.bulletins.length ? inbound.bulletins.map(bulletin)
    : [h("p", { class: "muted", "data-testid": "inbound-empty", text: t("board.inbound_none") })]));
  const box = $("board-items");
  box.dataset.count = String(items.items.length);
  box.replaceChildren(...(items.items.length ? items.items.map(item)
    : [h("p", { class: "muted", "data-testid": "board-empty", text: t("board.none") })]));
}

function bulletin(b) {
  const err = `inbound-error-${b.id}`;
  const decide = (decision) => async (event) => {
    const box = event.target.closest("article");
    for (const x of box.querySelectorAll("button")) x.disabled = true;
    try {
      await api("POST", `/inbound/${encodeURIComponent(b.id)}`, { decision });
      await load();
    } catch (e) {
      $(err).textContent = e.message;
      for (const x of box.querySelectorAll("button")) x.disabled = false;
    }
  };
  return h("article", { class: "card approval", "data-testid": `inbound-${b.id}` },
    h("h3", { text: b.title || b.ref }),
    h("dl", { class: "facts" },
      h("dt", { text: t("board.from") }), h("dd", { text: b.sender }),
      h("dt", { text: t("compose.priority") }), h("dd", { text: t(`priority.${b.level}`) }),
      h("dt", { text: t("approvals.zones") }), h("dd", { text: b.zones.map(zoneName).join(", ") }),
      b.text ? [h("dt", { text: t("approvals.content") }), h("dd", { class: "content", lang: "vi", text: b.text })] : null,
      b.auto_air_at ? [h("dt", { text: t("board.auto") }), h("dd", { text: formatTime(b.auto_air_at, true) })] : null,
      h("dt", { text: t("board.valid") }), h("dd", { text: b.valid_until ? formatTime(b.valid_until, true) : "—" })),
    h("p", { class: "actions" },
      h("button", { type: "button", class: "primary", "data-testid": `inbound-air-${b.id}`, text: t("board.air"), on: { click: decide("air") } }),
      " ",
      h("button", { type: "button", "data-testid": `inbound-reject-${b.id}`, text: t("approvals.reject"), on: { click: decide("reject") } })),
    h("p", { id: err, class: "field-error", role: "status" }));
}

function item(it) {
  const down = async (event) => {
    event.target.disabled = true;
    try {
      await api("DELETE", `/board/items/${encodeURIComponent(it.id)}`);
      await load();
    } catch (err) {
      showError(err);
      event.target.disabled = false;
    }
  };
  return h("article", { class: `card board-item ${it.level}`, "data-testid": `board-item-${it.id}`, "data-level": it.level },
    h("h3", { text: it.title || t("board.untitled") }),
    it.body ? h("p", { lang: "vi", text: it.body }) : null,
    h("p", { class: "muted small", text: `${t(`priority.${it.level}`)} · ${it.zones.map(zoneName).join(", ")} · ${formatTime(it.start, true)}${it.expires ? ` → ${formatTime(it.expires, true)}` : ""}` }),
    h("p", { class: "actions" }, h("button", { type: "button", "data-testid": `board-down-${it.id}`, text: t("board.down"), on: { click: down } })));
}
