// Every string the console shows comes from i18n/<lang>.json by key: t("nav.dashboard").
// Vietnamese is the default; the choice is kept in localStorage. Static markup names its key
// in data-i18n (text), data-i18n-label (aria-label) or data-i18n-placeholder; pages built by
// script call t() and are rebuilt when the language changes. A key missing from the file
// shows as the key itself (and a console warning), never as an empty control.

export const LANGS = ["vi", "en"];
const LANG_KEY = "loa.console.lang";
const LOCALES = { vi: "vi-VN", en: "en-GB" };
const TIME_ZONE = "Asia/Ho_Chi_Minh";

let lang = "vi";
let strings = {};

export function savedLang() {
  const saved = localStorage.getItem(LANG_KEY);
  return LANGS.includes(saved) ? saved : "vi";
}

export function currentLang() {
  return lang;
}

export async function setLang(next) {
  const res = await fetch(`/console/i18n/${next}.json`, { cache: "no-cache" });
  if (!res.ok) throw new Error(`i18n/${next}.json: HTTP ${res.status}`);
  strings = await res.json();
  lang = next;
  localStorage.setItem(LANG_KEY, next);
  document.documentElement.lang = next;
  applyI18n(document);
}

export function has(key) {
  return key in strings;
}

/** The string for `key`, with {name} placeholders filled from `vars`. */
export function t(key, vars) {
  let s = strings[key];
  if (s === undefined) {
    console.warn(`i18n: no "${key}" in ${lang}.json`);
    s = key;
  }
  if (vars) s = s.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
  return s;
}

export function applyI18n(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
}

/** A Unix time (s) as local date and time in Asia/Ho_Chi_Minh. */
export function formatTime(unixS, withDate = false) {
  if (unixS === null || unixS === undefined) return "—";
  const opts = { timeZone: TIME_ZONE, hour: "2-digit", minute: "2-digit" };
  if (withDate) Object.assign(opts, { day: "2-digit", month: "2-digit", year: "numeric" });
  return new Intl.DateTimeFormat(LOCALES[lang], opts).format(new Date(unixS * 1000));
}

export function formatNumber(n) {
  return new Intl.NumberFormat(LOCALES[lang]).format(n);
}
