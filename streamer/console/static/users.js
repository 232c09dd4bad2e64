// Users and roles (#/users, admins only): the users the API lists to this admin (those with a
// grant inside the zones they administer), a form to create one, and per user: change the
// full name and grants, disable or enable, set a new password, remove. Grants can be given
// only on zones this admin administers (the API's rule), so only those are offered. Every
// change is one call, so a refusal leaves the user as it was; it is shown next to its field.

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { ADMIN, ROLES, allowed } from "./grants.js";
import { formatTime, t } from "./i18n.js";
import { store, zoneName } from "./store.js";
import { fieldErrors, showError } from "./ui.js";

let editing = null; // the user name being edited, or "" for a new one

export function render(view) {
  editing = null;
  view.replaceChildren(
    h("div", { class: "page-head" },
      h("h1", { text: t("nav.users") }),
      h("button", { type: "button", class: "primary", id: "user-new", "data-testid": "user-new", text: t("users.new"), on: { click: () => openForm(null) } })),
    h("section", { id: "user-form-box", class: "card", hidden: true, "aria-labelledby": "user-form-title" }),
    h("div", { class: "table-wrap" },
      h("table", { "data-testid": "users-table" },
        h("caption", { class: "visually-hidden", text: t("nav.users") }),
        h("thead", {}, h("tr", {}, ["name", "full_name", "grants", "state", "actions"].map(
          (c) => h("th", { scope: "col", text: t(`users.col_${c}`) })))),
        h("tbody", { id: "users-rows" }))));
  load();
}

/** Zones this admin administers: the ones a grant may name. */
function grantableZones() {
  return [...store.zoneById.values()].filter((z) => allowed(store.user, ADMIN, z.id));
}

let users = [];

async function load() {
  let data;
  try {
    data = await api("GET", "/users");
  } catch (err) {
    showError(err);
    return;
  }
  if (!$("users-rows")) return;
  users = data.users;
  $("users-rows").replaceChildren(...users.map(row));
}

function row(u) {
  return h("tr", { "data-testid": `user-${u.name}`, "data-disabled": String(u.disabled), class: u.disabled ? "muted" : "" },
    h("th", { scope: "row", text: u.name }),
    h("td", { text: u.full_name || "—" }),
    h("td", {}, h("ul", { class: "plain" }, u.grants.map((g) => h("li", { text: `${t(`role.${g.role}`)} · ${zoneName(g.zone)}` })))),
    h("td", { text: u.disabled ? t("users.disabled") : t("users.active") }),
    h("td", {}, h("button", {
      type: "button", "data-testid": `user-edit-${u.name}`, text: t("users.edit"),
      "aria-label": `${t("users.edit")} ${u.name}`, on: { click: () => openForm(u) },
    })));
}

function grantRow(g, i) {
  const zones = grantableZones();
  return h("li", { class: "grant-row", "data-testid": "grant-row" },
    h("label", { for: `grant-role-${i}`, class: "visually-hidden", text: t("users.role") }),
    h("select", { id: `grant-role-${i}`, "data-testid": `grant-role-${i}`, class: "grant-role" },
      ROLES.map((r) => h("option", { value: r, text: t(`role.${r}`), selected: g.role === r }))),
    h("label", { for: `grant-zone-${i}`, class: "visually-hidden", text: t("users.zone") }),
    h("select", { id: `grant-zone-${i}`, "data-testid": `grant-zone-${i}`, class: "grant-zone" },
      zones.map((z) => h("option", { value: z.id, text: `${z.name} (${z.id})`, selected: g.zone === z.id }))),
    h("button", { type: "button", "data-testid": `grant-remove-${i}`, text: t("users.grant_remove"), on: { click: (e) => e.target.closest("li").remove() } }));
}

function openForm(u) {
  editing = u ? u.name : "";
  const box = $("user-form-box");
  const zones = grantableZones();
  let n = 0;
  const grants = h("ul", { id: "user-grants", class: "plain", "data-testid": "user-grants" },
    (u ? u.grants : []).map((g) => grantRow(g, n++)));
  const form = h("form", { id: "user-form", "data-testid": "user-form", novalidate: true },
    h("h2", { id: "user-form-title", text: u ? t("users.edit_title", { name: u.name }) : t("users.new") }),
    u ? null : input("name", { maxlength: 64, autocapitalize: "none", spellcheck: "false", autocomplete: "off" }),
    input("full_name", { maxlength: 200, value: u ? u.full_name : "" }),
    input("password", { type: "password", minlength: 10, maxlength: 256, autocomplete: "new-password" }, u ? t("users.password_keep") : t("users.password_hint")),
    h("fieldset", { class: "field", "aria-describedby": "user-grants-error" },
      h("legend", { text: t("users.grants") }),
      grants,
      h("button", { type: "button", "data-testid": "grant-add", disabled: !zones.length, text: t("users.grant_add"),
        on: { click: () => grants.append(grantRow({ role: "operator", zone: zones[0].id }, n++)) } }),
      h("p", { class: "field-error", id: "user-grants-error", "data-error-for": "grants" })),
    u ? h("div", { class: "field" },
      h("input", { type: "checkbox", id: "user-disabled", "data-testid": "user-disabled", checked: u.disabled }),
      h("label", { for: "user-disabled", class: "inline", text: t("users.disable") })) : null,
    h("p", { class: "actions" },
      h("button", { type: "submit", class: "primary", "data-testid": "user-save", text: t("users.save") }), " ",
      h("button", { type: "button", "data-testid": "user-cancel", text: t("users.cancel"), on: { click: closeForm } }), " ",
      u ? h("button", { type: "button", class: "danger", "data-testid": "user-delete", text: t("users.delete"), on: { click: () => remove(u) } }) : null),
    h("p", { class: "field-error", id: "user-form-error", "data-error-for": "id", role: "status" }),
    u ? h("p", { class: "muted small", text: t("users.created", { when: formatTime(u.created, true) }) }) : null);
  form.addEventListener("submit", save);
  box.replaceChildren(form);
  box.hidden = false;
  form.querySelector("input").focus();
}

function input(name, attrs, hint) {
  const id = `user-${name.replace("_", "-")}`;
  return h("div", { class: "field" },
    h("label", { for: id, text: t(`users.${name}`) }),
    hint ? h("p", { class: "hint", id: `${id}-hint`, text: hint }) : null,
    h("input", { id, "data-testid": id, ...attrs, "aria-describedby": `${hint ? `${id}-hint ` : ""}${id}-error` }),
    h("p", { class: "field-error", id: `${id}-error`, "data-error-for": name }));
}

function closeForm() {
  editing = null;
  $("user-form-box").hidden = true;
  $("user-form-box").replaceChildren();
  $("user-new").focus();
}

function grantsOf(form) {
  return [...form.querySelectorAll(".grant-row")].map((li) => ({
    role: li.querySelector(".grant-role").value, zone: li.querySelector(".grant-zone").value,
  }));
}

async function save(event) {
  event.preventDefault();
  const form = $("user-form");
  fieldErrors(form, null);
  showError(null);
  const password = $("user-password").value;
  const body = { full_name: $("user-full-name").value.trim(), grants: grantsOf(form) };
  if (password) body.password = password;
  try {
    if (editing) {
      body.disabled = $("user-disabled").checked;
      await api("PATCH", `/users/${encodeURIComponent(editing)}`, body);
    } else {
      body.name = $("user-name").value.trim();
      if (!password) {
        fieldErrors(form, { password: t("users.need_password") });
        return;
      }
      await api("POST", "/users", body);
    }
  } catch (err) {
    if (!fieldErrors(form, err)) showError(err);
    return;
  }
  closeForm();
  await load();
}

async function remove(u) {
  if (!window.confirm(t("users.confirm_delete", { name: u.name }))) return;
  try {
    await api("DELETE", `/users/${encodeURIComponent(u.name)}`);
  } catch (err) {
    if (!fieldErrors($("user-form"), err)) showError(err);
    return;
  }
  closeForm();
  await load();
}
