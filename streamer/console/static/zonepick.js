// Picking zones from the tree (the composer, the emergency panel, the schedule form, the zone
// edits): a box for each zone where the user holds one of `roles`, the rest of the visible tree
// shown for orientation with the reason it has no box. Targets are ticked: a ticked zone
// covers everything below it, so its descendants show ticked and locked, and only the topmost
// ticked zones are sent. One zone (a new parent, the zone to merge into) is a radio choice.

import { h } from "./dom.js";
import { allowed, covers } from "./grants.js";
import { t } from "./i18n.js";
import { store } from "./store.js";

/**
 * Fill `box` with the tree. `prefix`: ids and test ids are `${prefix}-${zone}`; `roles`: who
 * may tick a zone; `why`: the i18n key said of a zone they may not; `refuse(zone)`: the i18n
 * key of another reason a zone may not be chosen, or null; `extra(zone)`: more to show on a
 * zone's line; `onChange(chosen)`: after every change, with the chosen zones; `single`: one
 * zone, as radio buttons (read it with chosenZone). What was ticked stays ticked when the tree
 * is drawn again (a new snapshot).
 */
export function drawZonePicker(box, { prefix, roles, why, refuse = () => null, extra = () => null, onChange = () => {}, ticked = null, single = false }) {
  const keep = new Set(ticked || [...box.querySelectorAll("input:checked:enabled")].map((i) => i.value));
  const sync = () => onChange(single ? [chosenZone(box)].filter(Boolean) : lockCovered(box));
  const item = (z) => {
    const id = `${prefix}-${z.id}`;
    const not = allowed(store.user, roles, z.id) ? refuse(z) : why;
    const line = !not
      ? [h("input", { type: single ? "radio" : "checkbox", name: single ? prefix : undefined, id, value: z.id,
        "data-testid": id, checked: keep.has(z.id), on: { change: sync } }),
        h("label", { for: id, text: z.name }), extra(z)]
      : [h("span", { class: "zname", text: z.name }), h("span", { class: "muted small", text: ` ${t(not)}` })];
    return h("li", {}, line, z.children.length ? h("ul", {}, z.children.map(item)) : null);
  };
  box.replaceChildren(h("ul", { class: "tree pick" }, store.zones.map(item)));
  sync();
}

/** The zone chosen in a `single` picker, or "". */
export function chosenZone(box) {
  const r = box.querySelector("input[type=radio]:checked");
  return r ? r.value : "";
}

/** The topmost ticked zones in `box`. */
export function chosenZones(box) {
  const ticked = [...box.querySelectorAll("input[type=checkbox]")].filter((b) => b.checked && !b.disabled).map((b) => b.value);
  return ticked.filter((z) => !ticked.some((o) => o !== z && covers(o, z)));
}

/** Show the zones below a ticked one ticked and locked (and give them back their own state
 * when it is unticked); the chosen zones. */
export function lockCovered(box) {
  const chosen = chosenZones(box);
  for (const b of box.querySelectorAll("input[type=checkbox]")) {
    if (chosen.some((z) => b.value !== z && covers(z, b.value))) {
      b.dataset.own = b.dataset.own || String(b.checked);
      b.checked = true;
      b.disabled = true;
    } else if (b.disabled) {
      b.disabled = false;
      b.checked = b.dataset.own === "true";
      delete b.dataset.own;
    }
  }
  return chosen;
}
