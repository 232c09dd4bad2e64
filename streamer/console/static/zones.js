// Zones (#/zones, admins only): the zone tree this admin can see, and for a zone they
// administer the runtime edits of docs/zones.md: rename it (a new name alone: PATCH; a new key,
// with or without a new name: one move), move it under another zone, merge it into another, add a zone under it. Each edit
// first says in plain words what will happen (a modal dialog), then makes its API call; the
// page shows nothing changed before the API answers ok, then the answer (the mapping of old
// ids to new ones, the channels added and removed, the records rewritten) and the new tree.
// A merge the API refuses for a child key the other zone already has asks for new keys for
// the clashing children and is sent again with them. Beside the edits, the zone's settings
// (zonesettings.js).

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { ADMIN, allowed, covers } from "./grants.js";
import { currentLang, formatNumber, has, t } from "./i18n.js";
import { refresh, store, zoneName } from "./store.js";
import { confirmStep, fieldErrors, showError } from "./ui.js";
import { chosenZone, drawZonePicker } from "./zonepick.js";
import { drawSettings, forgetVoices, unsaved } from "./zonesettings.js";

const ACTIONS = ["rename", "move", "merge", "add"];
const MAPPING_SHOWN = 12; // a province-wide move maps hundreds of ids: the rest are counted

const page = {
  selected: "", // the zone being edited
  action: "rename",
  clash: [], // keys of the merged zone's children that need a new one (after a 409)
};

export function render(view) {
  if (!store.zoneById.has(page.selected)) page.selected = "";
  page.clash = [];
  forgetVoices();
  view.replaceChildren(
    h("div", { class: "page-head" },
      h("h1", { text: t("nav.zones") }),
      h("button", { type: "button", "data-testid": "zones-reload", text: t("dash.refresh"),
        on: { click: () => refresh().catch(showError) } })),
    h("p", { class: "hint", text: t("zones.intro") }),
    h("section", { id: "zones-result", class: "card zones-result", "data-testid": "zones-result",
      role: "status", "aria-labelledby": "zones-result-title", hidden: true }),
    h("div", { class: "zones-grid" },
      h("section", { class: "card", "aria-labelledby": "zones-tree-title" },
        h("h2", { id: "zones-tree-title", text: t("zones.tree") }),
        h("div", { id: "zones-tree", "data-testid": "zones-tree" })),
      h("div", {},
        h("section", { id: "zones-edit", class: "card", "data-testid": "zones-edit", "aria-labelledby": "zones-edit-title" }),
        h("section", { id: "zones-settings", class: "card", "data-testid": "zones-settings", "aria-labelledby": "zs-title",
          hidden: true }))),
    h("dialog", { id: "zones-dialog", class: "confirm", "data-testid": "confirm-dialog",
      "aria-labelledby": "zones-dialog-title", "aria-describedby": "zones-dialog-body" }));
  drawTree();
  drawZone();
}

export function update(what) {
  if (what !== "snapshot" || !$("zones-tree")) return;
  drawTree();
  if (!store.zoneById.has(page.selected)) {
    page.selected = "";
    drawZone();
  } else {
    drawPickers();
    if (!unsaved()) redrawSettings();
  }
}

/** The settings panel drawn again from the store (a snapshot came: another console, or this
 * one's own save, changed the tree), keeping what its status line says ("saved"). */
function redrawSettings() {
  const was = $("zs-status");
  const keep = was && was.textContent ? { text: was.textContent, ok: was.classList.contains("ok") } : null;
  drawSettings($("zones-settings"), store.zoneById.get(page.selected)).then(() => {
    const status = $("zs-status");
    if (!keep || !status || status.textContent) return;
    status.textContent = keep.text;
    status.classList.toggle("ok", keep.ok);
  }).catch(showError);
}

/** The selected zone: its edits and its settings. */
function drawZone() {
  drawEdit();
  drawSettings($("zones-settings"), store.zoneById.get(page.selected)).catch(showError);
}

// ---- the tree ------------------------------------------------------------------------------

function drawTree() {
  const node = (z) => {
    const mine = allowed(store.user, ADMIN, z.id);
    return h("li", { "data-zone": z.id, "data-testid": `zones-node-${z.id}`, "data-channel": String(z.channel) },
      h("div", { class: "zline" },
        mine
          ? h("button", { type: "button", class: "zpick", "data-testid": `zones-pick-${z.id}`,
            "aria-pressed": String(z.id === page.selected), text: z.name, on: { click: () => select(z.id) } })
          : h("span", { class: "zname", text: z.name }),
        h("span", { class: "zid", text: z.id }),
        z.channel ? h("span", { class: "tag", text: t("zones.channel") }) : null),
      z.children.length ? h("ul", {}, z.children.map(node)) : null);
  };
  $("zones-tree").replaceChildren(h("ul", { class: "tree" }, store.zones.map(node)));
}

function select(id) {
  page.selected = id;
  page.clash = [];
  for (const b of $("zones-tree").querySelectorAll("button.zpick")) {
    b.setAttribute("aria-pressed", String(b.dataset.testid === `zones-pick-${id}`));
  }
  drawZone();
  $("zones-edit-title").focus();
}

// ---- the selected zone and its edits -------------------------------------------------------

const keyOf = (id) => id.slice(id.lastIndexOf(".") + 1);
const parentOf = (id) => (id.includes(".") ? id.slice(0, id.lastIndexOf(".")) : "");

/** Why `action` cannot be done on zone `z` (an i18n key), or "". */
function cannot(action, z) {
  const top = !parentOf(z.id);
  if ((action === "move" || action === "merge") && top) return "zones.top_level";
  return "";
}

function drawEdit() {
  const box = $("zones-edit");
  const z = store.zoneById.get(page.selected);
  if (!z) {
    box.replaceChildren(h("h2", { id: "zones-edit-title", tabindex: "-1", text: t("zones.edit") }),
      h("p", { class: "muted", "data-testid": "zones-none", text: t("zones.pick_one") }));
    return;
  }
  if (cannot(page.action, z)) page.action = "rename";
  box.replaceChildren(
    h("h2", { id: "zones-edit-title", tabindex: "-1", text: z.name }),
    h("dl", { class: "facts" },
      h("dt", { text: t("zones.id") }), h("dd", { "data-testid": "zones-selected", text: z.id }),
      h("dt", { text: t("zones.kind") }),
      h("dd", { text: z.channel ? t("zones.is_channel") : t("zones.has_children", { n: formatNumber(z.children.length) }) })),
    h("div", { class: "actions zones-actions", role: "group", "aria-label": t("zones.actions") },
      ACTIONS.map((a) => h("button", {
        type: "button", "data-testid": `zones-action-${a}`, "aria-pressed": String(a === page.action),
        disabled: Boolean(cannot(a, z)), title: cannot(a, z) ? t(cannot(a, z)) : undefined, text: t(`zones.action_${a}`),
        on: { click: () => { page.action = a; page.clash = []; drawEdit(); } },
      }))),
    { rename: renameForm, move: moveForm, merge: mergeForm, add: addForm }[page.action](z));
  drawPickers();
}

function drawPickers() {
  const z = store.zoneById.get(page.selected);
  if (!z) return;
  if ($("zf-parent")) {
    drawZonePicker($("zf-parent"), { prefix: "zf-parent", roles: ADMIN, why: "zones.not_yours", single: true,
      refuse: (p) => (covers(z.id, p.id) ? "zones.not_inside_itself" : p.id === parentOf(z.id) ? "zones.here_now" : null) });
  }
  if ($("zf-into")) {
    drawZonePicker($("zf-into"), { prefix: "zf-into", roles: ADMIN, why: "zones.not_yours", single: true,
      refuse: (o) => {
        if (covers(z.id, o.id) || covers(o.id, z.id)) return "zones.not_related";
        return o.channel !== z.channel ? "zones.not_same_kind" : null;
      } });
  }
}

/** A labelled input with its error slot (for `field`, as the API names it). */
function field(id, label, attrs, errorFor, hint) {
  const err = `${id}-err`;
  return h("div", { class: "field" },
    h("label", { for: id, text: label }),
    hint ? h("p", { class: "hint", id: `${id}-hint`, text: hint }) : null,
    h("input", { id, "data-testid": id, "aria-describedby": hint ? `${err} ${id}-hint` : err, ...attrs }),
    h("p", { id: err, class: "field-error", "data-error-for": errorFor }));
}

function form(name, submit, ...fields) {
  return h("form", { id: "zones-form", class: "zones-form", "data-testid": `zones-form-${name}`, novalidate: true,
    on: { submit: (e) => { e.preventDefault(); submit(); } } },
    ...fields,
    h("p", { id: "zf-err-id", class: "field-error", "data-testid": "zf-error", "data-error-for": "id" }),
    h("p", { class: "actions" }, h("button", { type: "submit", id: "zf-submit", class: "primary", "data-testid": "zones-submit",
      text: t(`zones.action_${name}`) })));
}

const KEY_ATTRS = { autocapitalize: "none", spellcheck: "false", maxlength: 32 };

function renameForm(z) {
  const mayKey = parentOf(z.id) && allowed(store.user, ADMIN, parentOf(z.id));
  return form("rename", () => rename(z),
    field("zf-name", t("zones.name"), { value: z.name, maxlength: 200 }, "name"),
    field("zf-key", t("zones.key"), { ...KEY_ATTRS, value: keyOf(z.id), disabled: !mayKey }, "key",
      mayKey ? t("zones.key_hint") : t(parentOf(z.id) ? "zones.key_needs_parent" : "zones.top_level")));
}

function moveForm(z) {
  return form("move", () => move(z),
    h("fieldset", {}, h("legend", { text: t("zones.new_parent") }),
      h("div", { id: "zf-parent", "data-testid": "zf-parent" }),
      h("p", { id: "zf-parent-err", class: "field-error", "data-error-for": "parent" })),
    field("zf-key", t("zones.key"), { ...KEY_ATTRS, value: keyOf(z.id) }, "key", t("zones.key_hint")));
}

function mergeForm(z) {
  return form("merge", () => merge(z),
    h("fieldset", {}, h("legend", { text: t("zones.merge_into") }),
      h("p", { class: "hint", text: t("zones.merge_hint") }),
      h("div", { id: "zf-into", "data-testid": "zf-into" }),
      h("p", { id: "zf-into-err", class: "field-error", "data-error-for": "into" })),
    keysBox(z));
}

/** New keys for the children of `z` whose keys the zone it merges into has (after a 409). */
function keysBox(z) {
  const into = $("zf-into") ? chosenZone($("zf-into")) : "";
  return h("fieldset", { id: "zf-keys", "data-testid": "zf-keys", hidden: !page.clash.length },
    h("legend", { text: t("zones.new_keys") }),
    h("p", { class: "hint", text: t("zones.clash_hint", { into: zoneName(into) }) }),
    h("p", { id: "zf-keys-err", class: "field-error", "data-testid": "zf-keys-error", "data-error-for": "keys" }),
    page.clash.map((k) => field(`zf-newkey-${k}`, t("zones.new_key_for", { name: zoneName(`${z.id}.${k}`), key: k }),
      { ...KEY_ATTRS, "aria-describedby": `zf-newkey-${k}-err zf-keys-err` }, `keys.${k}`)));
}

function addForm(z) {
  return form("add", () => add(z),
    z.channel ? h("p", { class: "notice", text: t("zones.add_under_channel", { zone: z.name }) }) : null,
    h("p", { id: "zf-parent-err", class: "field-error", "data-error-for": "parent" }),
    field("zf-name", t("zones.name"), { maxlength: 200 }, "name"),
    field("zf-key", t("zones.key"), KEY_ATTRS, "key", t("zones.new_key_hint", { parent: z.id })),
    field("zf-code", t("zones.code"), { inputmode: "numeric", maxlength: 5 }, "code", t("zones.code_hint")));
}

// ---- the edits -----------------------------------------------------------------------------

const value = (id) => $(id).value.trim();

/** "3 khu phố (Khu phố 1, Khu phố 2, Khu phố 3)": how many zones are under `z`, by the words
 * their names share in Vietnamese ("Khu phố", "Ấp"), else "zones". */
function childrenText(z) {
  const names = z.children.map((c) => c.name);
  let unit = t("zones.units");
  if (currentLang() === "vi" && names.length) {
    const words = names.map((n) => n.split(/\s+/));
    const shared = [];
    for (let i = 0; i < 2 && words.every((w) => w.length > i + 1 && w[i] === words[0][i]); i += 1) shared.push(words[0][i]);
    if (shared.length && !/\d/.test(shared.join(""))) unit = shared.join(" ").toLowerCase();
  }
  const list = names.slice(0, 5).join(", ") + (names.length > 5 ? ", …" : "");
  return `${formatNumber(names.length)} ${unit} (${list})`;
}

/** Ask, then `call()`: it answers {results: [ZoneEditOut…], select?, error?} (`error`: a
 * second call refused after the first was done). The answer is shown and the tree read again.
 * A refusal goes next to the field it names; `refused(err)` may first add fields for it. */
async function edit({ title, lines, yes, call, refused = () => false }) {
  fieldErrors($("zones-form"), null);
  showError(null);
  const ok = await confirmStep({ dialog: $("zones-dialog"), title, lines: lines.map((l) => h("p", { text: l })),
    yes, back: t("zones.back"), opener: $("zf-submit") });
  if (!ok) return;
  $("zf-submit").disabled = true;
  let out;
  try {
    out = await call();
  } catch (err) {
    if (!$("zones-form")) return; // the page was left
    $("zf-submit").disabled = false;
    refused(err);
    if (!fieldErrors($("zones-form"), err)) showError(err);
    return;
  }
  const moved = out.results.find((r) => r.mapping && r.mapping[page.selected]);
  if (moved) page.selected = moved.mapping[page.selected];
  else if (out.select) page.selected = out.select;
  page.clash = [];
  await refresh().catch(showError);
  if (!$("zones-tree")) return;
  drawTree();
  drawZone();
  showResult(out.results);
  if (out.error && !fieldErrors($("zones-form"), out.error)) showError(out.error);
}

async function rename(z) {
  const name = value("zf-name");
  const key = value("zf-key");
  const newId = `${parentOf(z.id)}.${key}`;
  const keyChanged = Boolean(parentOf(z.id)) && key !== keyOf(z.id);
  const nameChanged = name !== z.name;
  const missing = {};
  if (!name) missing.name = t("zones.need_name");
  if (!key) missing.key = t("zones.need_key");
  else if (!keyChanged && !nameChanged) missing.name = t("zones.nothing_changed");
  if (Object.keys(missing).length) {
    fieldErrors($("zones-form"), missing);
    return;
  }
  const lines = [];
  if (nameChanged) lines.push(t("zones.confirm_name", { zone: z.name, name }));
  if (keyChanged) {
    lines.push(t("zones.confirm_key", { zone: name, old: z.id, id: newId }));
    lines.push(z.children.length ? t("zones.confirm_follow_below", { n: formatNumber(z.children.length) }) : t("zones.confirm_follow"));
  }
  await edit({
    title: t("zones.confirm_rename_title", { zone: z.name }), yes: t("zones.action_rename"), lines,
    call: async () => {
      if (keyChanged) { // one edit: the new key, and the new name with it
        const out = await api("POST", `/zones/${encodeURIComponent(z.id)}/move`, nameChanged ? { key, name } : { key });
        return { results: nameChanged ? [out, { action: "zone_rename", name: { from: z.name, to: name } }] : [out] };
      }
      await api("PATCH", `/zones/${encodeURIComponent(z.id)}`, { name });
      return { results: [{ action: "zone_rename", name: { from: z.name, to: name } }] };
    },
  });
}

async function move(z) {
  const parent = chosenZone($("zf-parent"));
  const key = value("zf-key") || keyOf(z.id);
  if (!parent) {
    fieldErrors($("zones-form"), { parent: t("zones.need_parent") });
    return;
  }
  const id = `${parent}.${key}`;
  await edit({
    title: t("zones.confirm_move_title", { zone: z.name }), yes: t("zones.action_move"),
    lines: [t("zones.confirm_move", { zone: z.name, parent: zoneName(parent), id }),
      z.children.length ? t("zones.confirm_follow_below", { n: formatNumber(z.children.length) }) : t("zones.confirm_follow")],
    call: async () => ({ results: [await api("POST", `/zones/${encodeURIComponent(z.id)}/move`,
      key === keyOf(z.id) ? { parent } : { parent, key })] }),
  });
}

async function merge(z) {
  const into = chosenZone($("zf-into"));
  if (!into) {
    fieldErrors($("zones-form"), { into: t("zones.need_into") });
    return;
  }
  const keys = {};
  const missing = {};
  for (const k of page.clash) {
    const v = value(`zf-newkey-${k}`);
    if (v) keys[k] = v;
    else missing[`keys.${k}`] = t("zones.need_key");
  }
  if (Object.keys(missing).length) {
    fieldErrors($("zones-form"), missing);
    return;
  }
  const target = zoneName(into);
  const lines = z.channel
    ? [t("zones.confirm_merge_channels", { zone: z.name, into: target })]
    : [t("zones.confirm_merge", { zone: z.name, into: target, children: childrenText(z) })];
  for (const [k, v] of Object.entries(keys)) lines.push(t("zones.confirm_new_key", { name: zoneName(`${z.id}.${k}`), id: `${into}.${v}` }));
  lines.push(t("zones.confirm_merge_gone", { zone: z.name, into: target }));
  await edit({
    title: t("zones.confirm_merge_title", { zone: z.name, into: target }), yes: t("zones.action_merge"), lines,
    call: async () => ({ results: [await api("POST", `/zones/${encodeURIComponent(z.id)}/merge`,
      Object.keys(keys).length ? { into, keys } : { into })] }),
    refused: (err) => {
      if (err.status !== 409 || !err.field.startsWith("keys")) return;
      // every child whose key `into` has (the API names the first), and the one it named
      const taken = new Set((store.zoneById.get(into) || { children: [] }).children.map((c) => keyOf(c.id)));
      const clash = z.children.map((c) => keyOf(c.id)).filter((k) => taken.has(keys[k] || k));
      const named = err.field.slice("keys.".length);
      if (named && !clash.includes(named)) clash.push(named);
      const typed = Object.fromEntries(page.clash.map((k) => [k, value(`zf-newkey-${k}`)]));
      page.clash = [...new Set([...page.clash, ...clash])];
      $("zf-keys").replaceWith(keysBox(z));
      for (const [k, v] of Object.entries(typed)) $(`zf-newkey-${k}`).value = v;
    },
  });
}

async function add(z) {
  const name = value("zf-name");
  const key = value("zf-key");
  const code = value("zf-code");
  const missing = {};
  if (!name) missing.name = t("zones.need_name");
  if (!key) missing.key = t("zones.need_key");
  if (Object.keys(missing).length) {
    fieldErrors($("zones-form"), missing);
    return;
  }
  const id = `${z.id}.${key}`;
  const lines = [t("zones.confirm_add", { name, id, parent: z.name })];
  if (z.channel) lines.push(t("zones.add_under_channel", { zone: z.name }));
  await edit({
    title: t("zones.confirm_add_title", { parent: z.name }), yes: t("zones.action_add"), lines,
    call: async () => ({ select: id, results: [await api("POST", "/zones",
      code ? { parent: z.id, key, name, code } : { parent: z.id, key, name })] }),
  });
}

// ---- the answer ----------------------------------------------------------------------------

function showResult(results) {
  const box = $("zones-result");
  const parts = [];
  for (const r of results) {
    if (r.action === "zone_rename") {
      parts.push(h("p", { "data-testid": "zones-renamed", text: t("zones.done_rename", { from: r.name.from, to: r.name.to }) }));
      continue;
    }
    const mapping = Object.entries(r.mapping);
    const kinds = Object.entries(r.rewritten).filter(([, n]) => n > 0)
      .map(([k, n]) => `${has(`zones.kind_${k.replace(/-/g, "_")}`) ? t(`zones.kind_${k.replace(/-/g, "_")}`) : k}: ${formatNumber(n)}`);
    parts.push(
      h("p", { class: "ok", text: t(`zones.done_${r.action}`, { rev: r.rev }) }),
      mapping.length ? h("p", { class: "list-title", text: t("zones.mapping") }) : null,
      mapping.length ? h("ul", { class: "plain mapping", "data-testid": "zones-mapping" },
        mapping.slice(0, MAPPING_SHOWN).map(([a, b]) => h("li", { "data-old": a, "data-new": b, text: `${a} → ${b}` })),
        mapping.length > MAPPING_SHOWN ? h("li", { class: "muted", text: t("zones.mapping_more", { n: formatNumber(mapping.length - MAPPING_SHOWN) }) }) : null) : null,
      h("p", { "data-testid": "zones-channels-added", "data-value": r.channels_added.join(","),
        text: t("zones.channels_added", { n: formatNumber(r.channels_added.length), list: r.channels_added.join(", ") || "—" }) }),
      h("p", { "data-testid": "zones-channels-removed", "data-value": r.channels_removed.join(","),
        text: t("zones.channels_removed", { n: formatNumber(r.channels_removed.length), list: r.channels_removed.join(", ") || "—" }) }),
      h("p", { "data-testid": "zones-rewritten", text: kinds.length ? t("zones.rewritten", { list: kinds.join(", ") }) : t("zones.rewritten_none") }));
  }
  box.replaceChildren(h("h2", { id: "zones-result-title", tabindex: "-1", text: t("zones.result") }), ...parts);
  box.hidden = false;
  $("zones-result-title").focus(); // it shows above the tree, maybe out of sight
}
