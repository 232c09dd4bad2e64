// The bulletin lexicon (#/lexicon, admins): how the voice reads abbreviations, units and road
// names. Every entry of GET /tts/lexicon with where it comes from (built in, the tts_lexicon
// file, an admin) and whether it is the one read, with a search that ignores Vietnamese marks;
// "try it" (POST /tts/normalize) shows what a sentence of a bulletin will be read as, so a
// term is checked before and after it is added. An admin of the province (admin of every
// top-level zone: the API's rule) adds or changes a term (PUT /tts/lexicon/{term}) and removes
// one of the admins' (DELETE, after a confirmation); other admins read only. Nothing shows as
// changed before the API answers; then the list is read again and "try it" runs again. A
// change made elsewhere (another admin's console: the `lexicon` event) reads the list again.

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { ADMIN, allowed } from "./grants.js";
import { formatTime, t } from "./i18n.js";
import { store } from "./store.js";
import { confirmStep, fieldErrors, showError } from "./ui.js";
import { fold } from "./upload.js";

// the admins' entries first: they are the ones this page changes
const SOURCE_ORDER = { admin: 0, file: 1, "built-in": 2 };

const page = { rows: null };

/** Admin of every top-level zone, as PUT and DELETE /tts/lexicon require. */
function mayChange() {
  return store.zones.length > 0 && store.zones.every((z) => allowed(store.user, ADMIN, z.id));
}

export function render(view) {
  page.rows = null;
  const may = mayChange();
  view.replaceChildren(
    h("div", { class: "page-head" },
      h("h1", { text: t("nav.lexicon") }),
      h("button", { type: "button", "data-testid": "lex-reload", text: t("dash.refresh"), on: { click: () => load().catch(showError) } })),
    h("p", { class: "hint", text: t("lexicon.intro") }),
    tryBox(),
    may ? entryForm() : h("p", { class: "notice", "data-testid": "lex-read-only", text: t("lexicon.read_only") }),
    h("section", { class: "card", "aria-labelledby": "lex-list-title" },
      h("h2", { id: "lex-list-title", text: t("lexicon.entries") }),
      h("div", { class: "field" },
        h("label", { for: "lex-search", text: t("lexicon.search") }),
        h("input", { id: "lex-search", type: "search", "data-testid": "lex-search", on: { input: drawList } })),
      h("div", { id: "lex-list", "data-testid": "lex-list", "aria-live": "polite" },
        h("p", { class: "loading", text: t("app.loading") }))),
    h("dialog", { id: "lex-dialog", class: "confirm", "data-testid": "confirm-dialog",
      "aria-labelledby": "lex-dialog-title", "aria-describedby": "lex-dialog-body" }));
  load().catch(showError);
}

/** Another admin changed the lexicon (a `lexicon` event): the list as it is now. */
export function update(what) {
  if (what === "lexicon" && page.rows !== null) load().catch(showError);
}

async function load() {
  const data = await api("GET", "/tts/lexicon");
  page.rows = data.entries.map((r, i) => ({ ...r, i }))
    .sort((a, b) => SOURCE_ORDER[a.source] - SOURCE_ORDER[b.source] || a.i - b.i);
  drawList();
}

// ---- try it --------------------------------------------------------------------------------

function tryBox() {
  return h("form", { id: "lex-try", class: "card", "data-testid": "lex-try", novalidate: true, "aria-labelledby": "lex-try-title",
    on: { submit: (e) => { e.preventDefault(); tryText().catch(showError); } } },
    h("h2", { id: "lex-try-title", text: t("lexicon.try") }),
    h("div", { class: "field" },
      h("label", { for: "lex-try-text", text: t("lexicon.try_text") }),
      h("p", { class: "hint", id: "lex-try-hint", text: t("lexicon.try_hint") }),
      h("textarea", { id: "lex-try-text", "data-testid": "lex-try-text", rows: 2, maxlength: 5000, lang: "vi",
        "aria-describedby": "lex-try-err lex-try-hint" }),
      h("p", { id: "lex-try-err", class: "field-error", "data-error-for": "text" })),
    h("p", { class: "actions" }, h("button", { type: "submit", class: "primary", "data-testid": "lex-try-submit", text: t("lexicon.try_submit") })),
    h("div", { id: "lex-spoken-box", class: "spoken", hidden: true },
      h("p", { class: "list-title", text: t("lexicon.spoken") }),
      h("p", { id: "lex-spoken", "data-testid": "lex-spoken", lang: "vi", "aria-live": "polite" })));
}

/** What the text in the box reads as, from the API (an empty box: nothing asked). */
async function tryText() {
  const form = $("lex-try");
  const text = $("lex-try-text").value.trim();
  fieldErrors(form, null);
  if (!text) {
    fieldErrors(form, { text: t("lexicon.need_text") });
    return;
  }
  let out;
  try {
    out = await api("POST", "/tts/normalize", { text });
  } catch (err) {
    if (!$("lex-try")) return; // the page was left
    if (!fieldErrors(form, err)) showError(err);
    return;
  }
  if (!$("lex-spoken")) return;
  $("lex-spoken").textContent = out.spoken;
  $("lex-spoken-box").hidden = false;
}

/** After a change: the sentence tried before is read again with the lexicon as it is now. */
function tryAgain() {
  if ($("lex-try-text") && $("lex-try-text").value.trim() && !$("lex-spoken-box").hidden) tryText().catch(showError);
}

// ---- add or change a term ------------------------------------------------------------------

function entryForm() {
  const field = (id, name, attrs, hint) => h("div", { class: "field" },
    h("label", { for: id, text: t(`lexicon.${name}`) }),
    h("p", { class: "hint", id: `${id}-hint`, text: hint }),
    h("input", { id, "data-testid": id, "aria-describedby": `${id}-err ${id}-hint`, ...attrs }),
    h("p", { id: `${id}-err`, class: "field-error", "data-error-for": name }));
  return h("form", { id: "lex-form", class: "card", "data-testid": "lex-form", novalidate: true, "aria-labelledby": "lex-form-title",
    on: { submit: (e) => { e.preventDefault(); save().catch(showError); } } },
    h("h2", { id: "lex-form-title", text: t("lexicon.add") }),
    h("div", { class: "field-row" },
      field("lex-term", "term", { maxlength: 64, autocapitalize: "none", spellcheck: "false", autocomplete: "off" }, t("lexicon.term_hint")),
      field("lex-reading", "reading", { maxlength: 200, lang: "vi" }, t("lexicon.reading_hint"))),
    h("p", { class: "actions" }, h("button", { type: "submit", id: "lex-save", class: "primary", "data-testid": "lex-save", text: t("lexicon.save") })),
    h("p", { id: "lex-status", class: "field-error", role: "status", "data-testid": "lex-status", "data-error-for": "" }));
}

async function save() {
  const form = $("lex-form");
  const term = $("lex-term").value.trim();
  const reading = $("lex-reading").value.trim();
  fieldErrors(form, null);
  showError(null);
  $("lex-status").classList.remove("ok");
  if (!term) { // the term is the URL's last part: an empty one would call another route
    fieldErrors(form, { term: t("lexicon.need_term") });
    return;
  }
  const before = (page.rows || []).find((r) => r.source === "admin" && r.term === term);
  $("lex-save").disabled = true;
  let entry;
  try {
    entry = await api("PUT", `/tts/lexicon/${encodeURIComponent(term)}`, { reading });
  } catch (err) {
    if (!fieldErrors(form, err)) showError(err);
    return;
  } finally {
    if ($("lex-save")) $("lex-save").disabled = false;
  }
  if (!$("lex-form")) return;
  $("lex-term").value = "";
  $("lex-reading").value = "";
  $("lex-status").textContent = before && before.reading !== entry.reading
    ? t("lexicon.changed", { term: entry.term, from: before.reading, reading: entry.reading })
    : t("lexicon.saved", { term: entry.term, reading: entry.reading });
  $("lex-status").classList.add("ok");
  await load();
  tryAgain();
}

/** Fill the form from a listed entry: an admin's to change it, another to read it otherwise
 * (an abbreviation only: an admin's term matches as a whole word, not as a unit after a number
 * or a road before one). */
function edit(row) {
  $("lex-term").value = row.term;
  $("lex-reading").value = row.source === "admin" ? row.reading : "";
  fieldErrors($("lex-form"), null);
  $("lex-status").textContent = "";
  $("lex-reading").focus();
}

async function remove(row, opener) {
  showError(null);
  const ok = await confirmStep({
    dialog: $("lex-dialog"), title: t("lexicon.confirm_delete_title", { term: row.term }), opener,
    lines: [h("p", { text: t("lexicon.confirm_delete", { term: row.term, reading: row.reading }) })],
    yes: t("lexicon.delete"), back: t("lexicon.back"),
  });
  if (!ok) return;
  try {
    await api("DELETE", `/tts/lexicon/${encodeURIComponent(row.term)}`);
  } catch (err) {
    showError(err);
    return;
  }
  if (!$("lex-list")) return;
  if ($("lex-status")) {
    $("lex-status").textContent = t("lexicon.deleted", { term: row.term });
    $("lex-status").classList.add("ok");
  }
  await load();
  tryAgain();
}

// ---- the list ------------------------------------------------------------------------------

function drawList() {
  const box = $("lex-list");
  if (!box || !page.rows) return;
  const q = fold($("lex-search").value.trim());
  const shown = page.rows.filter((r) => !q || fold(`${r.term} ${r.reading}`).includes(q));
  box.dataset.count = String(shown.length);
  if (!shown.length) {
    box.replaceChildren(h("p", { class: "muted", "data-testid": "lex-none", text: t("lexicon.none_match") }));
    return;
  }
  const may = mayChange();
  const col = (key) => h("th", { scope: "col", text: t(key) });
  box.replaceChildren(h("table", { class: "cards" },
    h("thead", {}, h("tr", {},
      col("lexicon.term"), col("lexicon.reading"), col("lexicon.kind"), col("lexicon.source"),
      may ? col("lexicon.actions") : null)),
    h("tbody", {}, shown.map((r) => row(r, may)))));
}

function row(r, may) {
  const source = r.source === "admin"
    ? t("lexicon.source_admin_by", { user: r.added_by || "—", when: formatTime(r.added, true) })
    : t(`lexicon.source_${r.source.replace("-", "_")}`);
  return h("tr", { "data-testid": "lex-row", "data-term": r.term, "data-source": r.source, "data-in-use": String(r.in_use),
    class: r.in_use ? "" : "muted" },
  h("th", { scope: "row", "data-label": t("lexicon.term"), text: r.term }),
  h("td", { "data-label": t("lexicon.reading"), lang: "vi" }, r.reading,
    r.in_use ? null : h("span", { class: "small", text: ` (${t("lexicon.not_in_use")})` })),
  h("td", { "data-label": t("lexicon.kind"), text: t(`lexicon.kind_${r.kind}`) }),
  h("td", { "data-label": t("lexicon.source"), text: source }),
  may ? h("td", {}, h("span", { class: "actions" },
    r.kind !== "abbreviation" ? null : h("button", { type: "button", "data-testid": "lex-edit", text: t(r.source === "admin" ? "lexicon.change" : "lexicon.override"),
      "aria-label": t(r.source === "admin" ? "lexicon.change_named" : "lexicon.override_named", { term: r.term }),
      on: { click: () => edit(r) } }),
    r.source === "admin" ? h("button", { type: "button", class: "danger", "data-testid": "lex-delete", text: t("lexicon.delete"),
      "aria-label": t("lexicon.delete_named", { term: r.term }), on: { click: (e) => remove(r, e.currentTarget).catch(showError) } }) : null)) : null);
}
