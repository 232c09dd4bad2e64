// Showing what went wrong: the API's message next to the field it names (a form marks a
// field's error slot with data-error-for="<field>"; "source.text" falls back to "source",
// then to the form's own slot), else in the page's error box. Focus goes to the first field
// in error so a keyboard user lands on it. And the one way to ask before a weighty action: a
// modal dialog that sums up what will happen.

import { ApiError } from "./api.js";
import { $, h } from "./dom.js";
import { t } from "./i18n.js";

/** Show `err` in the page's error box (null clears it). */
export function showError(err) {
  const box = $("error");
  if (!err) {
    box.textContent = "";
    return;
  }
  if (err instanceof ApiError) {
    const head = t(`status.${err.status}`) === `status.${err.status}` ? t("status.other", { status: err.status }) : t(`status.${err.status}`);
    box.textContent = `${head}: ${err.message}`;
  } else {
    box.textContent = err.message || String(err);
  }
}

function slotFor(form, field) {
  for (let f = field; f; f = f.includes(".") ? f.slice(0, f.lastIndexOf(".")) : "") {
    const slot = form.querySelector(`[data-error-for="${CSS.escape(f)}"]`);
    if (slot) return slot;
  }
  return null;
}

/**
 * Clear the form's field errors, then show `errors`: an ApiError (its message in the slot of
 * its field) or {field: message}. Returns whether every message found a slot.
 */
export function fieldErrors(form, errors) {
  for (const slot of form.querySelectorAll("[data-error-for]")) {
    slot.textContent = "";
    const input = form.querySelector(`[aria-describedby~="${slot.id}"]`);
    if (input) input.removeAttribute("aria-invalid");
  }
  if (!errors) return true;
  const pairs = errors instanceof ApiError ? [[errors.field, errors.message]] : Object.entries(errors);
  let all = true;
  let first = null;
  for (const [field, message] of pairs) {
    const slot = field ? slotFor(form, field) : null;
    if (!slot) {
      all = false;
      continue;
    }
    slot.textContent = message;
    const input = form.querySelector(`[aria-describedby~="${slot.id}"]`);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      first = first || input;
    }
  }
  if (first) first.focus();
  return all;
}

/**
 * Ask before acting: fill the page's `dialog` (a <dialog class="confirm">) with what will
 * happen and show it modal. Resolves true only on its confirm button (`yes`); `back` or
 * Escape resolve false. The focus starts on `back` (a stray Enter does nothing) and returns
 * to `opener`.
 */
export function confirmStep({ dialog, title, lines, yes, back, opener }) {
  return new Promise((resolve) => {
    let answer = false;
    const no = h("button", { type: "button", "data-testid": "confirm-no", text: back,
      on: { click: () => dialog.close() } });
    const go = h("button", { type: "button", class: "danger big", "data-testid": "confirm-yes", text: yes,
      on: { click: () => { answer = true; dialog.close(); } } });
    dialog.replaceChildren(
      h("h2", { id: `${dialog.id}-title`, text: title }),
      h("div", { id: `${dialog.id}-body` }, lines),
      h("div", { class: "actions" }, go, no));
    dialog.addEventListener("close", () => {
      if (opener && opener.isConnected) opener.focus();
      resolve(answer);
    }, { once: true });
    dialog.showModal();
    no.focus();
  });
}
