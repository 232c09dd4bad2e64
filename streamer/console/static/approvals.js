// The approver's queue (#/approvals): broadcasts and schedules held in zones that need
// approval, which this user may decide (GET /approvals lists only those: approver or admin on
// every zone of the item). Each is approved or rejected with an optional note, one POST each;
// the API's refusal (409: decided meanwhile) shows on that item. The queue loads again when
// an "approval" event arrives, so two approvers never act on a stale list for long.

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { formatTime, t } from "./i18n.js";
import { zoneName } from "./store.js";
import { showError } from "./ui.js";

let loading = null;

export function render(view) {
  view.replaceChildren(
    h("div", { class: "page-head" },
      h("h1", { text: t("nav.approvals") }),
      h("button", { type: "button", "data-testid": "approvals-reload", text: t("dash.refresh"), on: { click: load } })),
    h("p", { class: "hint", text: t("approvals.hint") }),
    h("ul", { id: "approvals-done", class: "plain done", "data-testid": "approvals-done", role: "status" }),
    h("section", { id: "approvals-list", "data-testid": "approvals-list", "aria-live": "polite" },
      h("p", { class: "loading", text: t("app.loading") })));
  load();
}

export function update(what) {
  if (what === "approval" || what === "snapshot") load();
}

async function load() {
  const mine = api("GET", "/approvals");
  loading = mine;
  let data;
  try {
    data = await mine;
  } catch (err) {
    if (loading === mine) showError(err);
    return;
  }
  if (loading !== mine || !$("approvals-list")) return; // a newer load, or the page was left
  const items = [
    ...data.broadcasts.map((b) => ({ kind: "broadcasts", id: String(b.id), rec: b, when: b.created })),
    ...data.schedules.map((s) => ({ kind: "schedules", id: s.id, rec: s, when: 0 })),
  ].sort((a, b) => a.when - b.when);
  const list = $("approvals-list");
  list.dataset.count = String(items.length);
  list.replaceChildren(...(items.length ? items.map(card) : [h("p", { "data-testid": "approvals-empty", text: t("approvals.none") })]));
}

function what(rec) {
  const s = rec.source || {};
  if (s.kind === "tts") return s.text;
  if (s.kind === "tone") return t("approvals.tone", { hz: s.hz, seconds: s.seconds });
  return t(`source.${s.kind}`) + (s.clip ? ` ${s.clip}` : s.input ? ` ${s.input}` : "");
}

function card(item) {
  const { kind, id, rec } = item;
  const key = `${kind}-${id}`;
  const note = `approval-note-${key}`;
  const err = `approval-error-${key}`;
  const decide = (decision) => async (event) => {
    const box = event.target.closest("article");
    for (const b of box.querySelectorAll("button")) b.disabled = true;
    $(err).textContent = "";
    try {
      await api("POST", `/approvals/${kind}/${encodeURIComponent(id)}`, { decision, note: $(note).value.trim() });
      $("approvals-done").append(h("li", { "data-id": id, "data-kind": kind, "data-decision": decision },
        t(`approvals.done_${decision}`), " ", rec.label || what(rec)));
      load();
    } catch (e) {
      $(err).textContent = e.message;
      for (const b of box.querySelectorAll("button")) b.disabled = false;
    }
  };
  return h("article", { class: "card approval", "data-testid": `approval-${key}`, "data-kind": kind, "data-id": id },
    h("h2", { text: rec.label || t(`approvals.kind_${kind}`) }),
    h("dl", { class: "facts" },
      h("dt", { text: t("approvals.kind") }), h("dd", { text: t(`approvals.kind_${kind}`) }),
      h("dt", { text: t("approvals.content") }), h("dd", { class: "content", lang: "vi", text: what(rec) }),
      h("dt", { text: t("approvals.zones") }), h("dd", { text: rec.zones.map(zoneName).join(", ") }),
      h("dt", { text: t("compose.priority") }), h("dd", { text: t(`priority.${rec.priority}`) }),
      kind === "schedules" ? [h("dt", { text: t("approvals.rule") }), h("dd", { text: rec.rrule ? `${rec.rrule} (${rec.dtstart})` : rec.at })] : null,
      h("dt", { text: t("approvals.by") }), h("dd", { text: kind === "broadcasts" ? `${rec.created_by || "—"} · ${formatTime(rec.created, true)}` : rec.created_by || "—" })),
    h("div", { class: "field" },
      h("label", { for: note, text: t("approvals.note") }),
      h("input", { id: note, "data-testid": `approval-note-${key}`, maxlength: 500, "aria-describedby": err })),
    h("p", { class: "actions" },
      h("button", { type: "button", class: "primary", "data-testid": `approve-${key}`, text: t("approvals.approve"), on: { click: decide("approve") } }),
      " ",
      h("button", { type: "button", "data-testid": `reject-${key}`, text: t("approvals.reject"), on: { click: decide("reject") } })),
    h("p", { id: err, class: "field-error", role: "status", "data-testid": `approval-result-${key}` }));
}
