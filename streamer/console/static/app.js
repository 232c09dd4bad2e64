// The console's shell: sign-in and sign-out, who is signed in and what they may do, the
// language switch, the nav and the hash router (#/, #/compose, …), the emergency banner, and
// the live event stream feeding the store. Pages are modules with render(view, ctx) and an
// optional update(what) called when the store changes; they are rebuilt on a language switch.

import { api, session } from "./api.js";
import * as approvals from "./approvals.js";
import * as audit from "./audit.js";
import * as board from "./board.js";
import * as clips from "./clips.js";
import * as compose from "./compose.js";
import * as dashboard from "./dashboard.js";
import { $, h } from "./dom.js";
import { EventStream } from "./events.js";
import * as emergency from "./emergency.js";
import { ADMIN, APPROVE, EMERGENCY, OPERATE, anywhere, heldRoles } from "./grants.js";
import { LANGS, applyI18n, currentLang, savedLang, setLang, t } from "./i18n.js";
import * as lexicon from "./lexicon.js";
import * as listen from "./listen.js";
import * as reports from "./reports.js";
import * as schedules from "./schedules.js";
import * as speakers from "./speakers.js";
import { apply, clear, emergenciesOnAir, refresh, store, subscribe, zoneName } from "./store.js";
import { fieldErrors, showError } from "./ui.js";
import * as users from "./users.js";
import * as zones from "./zones.js";

// `needs`: roles needed somewhere, else the entry is disabled with its reason (`hide`: left out)
const ROUTES = [
  { path: "/", key: "dashboard", page: dashboard },
  { path: "/compose", key: "compose", page: compose, needs: OPERATE, why: "nav.why_operator" },
  { path: "/emergency", key: "emergency", page: emergency, needs: EMERGENCY, why: "nav.why_emergency" },
  { path: "/approvals", key: "approvals", page: approvals, needs: APPROVE, why: "nav.why_approver", hide: true },
  { path: "/schedules", key: "schedules", page: schedules },
  { path: "/clips", key: "clips", page: clips },
  { path: "/board", key: "board", page: board },
  { path: "/speakers", key: "speakers", page: speakers },
  { path: "/audit", key: "audit", page: audit },
  { path: "/reports", key: "reports", page: reports },
  { path: "/users", key: "users", page: users, needs: ADMIN, why: "nav.why_admin", hide: true },
  { path: "/zones", key: "zones", page: zones, needs: ADMIN, why: "nav.why_admin", hide: true },
  { path: "/lexicon", key: "lexicon", page: lexicon, needs: ADMIN, why: "nav.why_admin", hide: true },
  { path: "/listen", key: "listen", page: listen },
];

const shell = { route: null, page: null, liveState: "off", streamWasLive: false };

const stream = new EventStream({
  onEvent: (name, data) => apply(name, data),
  onState: (state) => {
    if (state === "live" && shell.streamWasLive) refresh().catch(() => {}); // catch up on the gap
    if (state === "live") shell.streamWasLive = true;
    shell.liveState = state;
    renderLiveState();
  },
});

// ---- sign in and out -----------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const form = $("sign-in");
  fieldErrors(form, null);
  showError(null);
  const user = $("sign-in-user").value.trim();
  const password = $("sign-in-password").value;
  const missing = {};
  if (!user) missing.user = t("signin.need_user");
  if (!password) missing.password = t("signin.need_password");
  if (Object.keys(missing).length) {
    fieldErrors(form, missing);
    return;
  }
  try {
    const data = await api("POST", "/login", { user, password });
    session.set(data.token);
    $("sign-in-password").value = "";
    await enter(data.user);
  } catch (err) {
    if (!fieldErrors(form, err)) showError(err);
  }
}

async function signOut() {
  stream.stop();
  await api("POST", "/logout").catch(() => {});
  signedOut(null);
}

function signedOut(err) {
  stream.stop();
  session.set("");
  clear();
  leavePage();
  shell.streamWasLive = false;
  for (const id of ["who", "nav", "view", "foot", "emergency-banner"]) $(id).hidden = true;
  $("sign-in").hidden = false;
  if (err) showError(err);
  $("sign-in-user").focus();
}

async function enter(user) {
  store.user = user;
  $("sign-in").hidden = true;
  for (const id of ["who", "nav", "view", "foot"]) $(id).hidden = false;
  renderWho();
  renderNav();
  $("view").replaceChildren(h("p", { class: "loading", text: t("app.loading") }));
  await refresh();
  renderWho(); // zone names are known now
  renderBanner();
  stream.start();
  route();
}

// ---- header: who, roles, grants ------------------------------------------------------------

function renderWho() {
  const u = store.user;
  if (!u) return;
  $("who-name").textContent = u.full_name ? `${u.full_name} (${u.name})` : u.name;
  const roles = heldRoles(u);
  let details = $("who-grants");
  const open = details ? details.open : false;
  details = h("details", { id: "who-grants", class: "who-grants", "data-testid": "who-grants", open },
    h("summary", { text: roles.length ? roles.map((r) => t(`role.${r}`)).join(", ") : t("who.no_role") }),
    h("ul", {},
      u.grants.map((g) => h("li", { "data-testid": "grant" },
        h("strong", { text: t(`role.${g.role}`) }), " · ", zoneName(g.zone),
        h("span", { class: "muted", text: ` (${g.zone})` })))),
    h("p", { class: "may-title", text: t("who.may") }),
    h("ul", {}, roles.map((r) => h("li", { text: t(`may.${r}`) }))));
  const old = $("who-grants");
  if (old) old.replaceWith(details);
  else $("who").insertBefore(details, $("sign-out"));
}

// ---- nav and routes ------------------------------------------------------------------------

function currentPath() {
  const hash = location.hash.startsWith("#/") ? location.hash.slice(1) : "/";
  return ROUTES.some((r) => r.path === hash) ? hash : "/";
}

function mayOpen(r) {
  return !r.needs || anywhere(store.user, r.needs);
}

function renderNav() {
  const path = currentPath();
  const items = [];
  for (const r of ROUTES) {
    const may = mayOpen(r);
    if (!may && r.hide) continue;
    const label = t(`nav.${r.key}`);
    if (may) {
      items.push(h("li", {}, h("a", {
        href: `#${r.path}`, "data-testid": `nav-${r.key}`,
        "aria-current": r.path === path ? "page" : undefined, text: label,
      })));
    } else {
      items.push(h("li", {}, h("span", {
        class: "nav-disabled", "data-testid": `nav-${r.key}`, "aria-disabled": "true",
      }, label, h("small", { class: "why", text: t(r.why) }))));
    }
  }
  $("nav-list").replaceChildren(...items);
}

function leavePage() {
  if (shell.page && shell.page.leave) shell.page.leave();
  shell.page = null;
  shell.route = null;
}

function route() {
  if (!store.user) return;
  const path = currentPath();
  const r = ROUTES.find((x) => x.path === path);
  const moved = shell.route !== r;
  leavePage();
  shell.route = r;
  closeMenu();
  renderNav();
  const view = $("view");
  showError(null);
  view.dataset.route = r.key;
  if (!mayOpen(r)) {
    view.replaceChildren(h("h1", { tabindex: "-1", text: t(`nav.${r.key}`) }),
      h("p", { class: "notice", "data-testid": "not-allowed", text: t(r.why) }));
  } else {
    shell.page = r.page;
    r.page.render(view, { user: store.user });
  }
  document.title = `${t(`nav.${r.key}`)} · ${t("app.title")}`;
  const heading = view.querySelector("h1");
  if (moved && heading && document.activeElement && document.activeElement !== document.body) {
    heading.setAttribute("tabindex", "-1");
    heading.focus();
  }
}

function closeMenu() {
  $("nav-toggle").setAttribute("aria-expanded", "false");
  $("nav").classList.remove("open");
}

function toggleMenu() {
  const open = $("nav-toggle").getAttribute("aria-expanded") !== "true";
  $("nav-toggle").setAttribute("aria-expanded", String(open));
  $("nav").classList.toggle("open", open);
  if (open) {
    const first = $("nav-list").querySelector("a");
    if (first) first.focus();
  }
}

// ---- emergency banner and live state -------------------------------------------------------

function renderBanner() {
  const on = store.user ? emergenciesOnAir() : [];
  const banner = $("emergency-banner");
  banner.hidden = on.length === 0;
  banner.replaceChildren(...on.map((e) => {
    const names = e.zones.slice(0, 4).map(zoneName).join(", ");
    const more = e.zones.length > 4 ? t("banner.more", { n: e.zones.length - 4 }) : "";
    return h("p", { "data-testid": "emergency-on-air", "data-broadcast": e.id },
      h("strong", { text: t("banner.emergency") }), " ",
      e.label || t("banner.no_label"), " — ", names + more);
  }));
}

function renderLiveState() {
  const el = $("live-state");
  el.dataset.state = shell.liveState;
  el.textContent = t(`live.${shell.liveState}`);
}

// ---- language ------------------------------------------------------------------------------

async function switchLang(lang) {
  if (lang === currentLang()) return;
  await setLang(lang);
  renderLangButtons();
  if (store.user) {
    renderWho();
    renderBanner();
    renderLiveState();
    route();
  }
}

function renderLangButtons() {
  for (const b of document.querySelectorAll("[data-lang]")) {
    b.setAttribute("aria-pressed", String(b.dataset.lang === currentLang()));
  }
}

// ---- start ---------------------------------------------------------------------------------

async function start() {
  await setLang(savedLang());
  renderLangButtons();
  for (const b of document.querySelectorAll("[data-lang]")) {
    if (LANGS.includes(b.dataset.lang)) b.addEventListener("click", () => switchLang(b.dataset.lang).catch(showError));
  }
  $("sign-in").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("nav-toggle").addEventListener("click", toggleMenu);
  document.querySelector(".skip").addEventListener("click", (e) => {
    e.preventDefault();
    $("main").focus();
  });
  window.addEventListener("hashchange", route);
  session.onSignedOut = signedOut;
  subscribe((what) => {
    renderBanner();
    if (shell.page && shell.page.update) shell.page.update(what);
  });
  if (!session.token) {
    signedOut(null);
    return;
  }
  try {
    await enter(await api("GET", "/me"));
  } catch (err) {
    if (err.status !== 401) signedOut(err);
  }
}

applyI18n(document);
start().catch((err) => showError(err));
