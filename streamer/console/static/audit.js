// #/audit: not built yet; the page says so and names what to use meanwhile.

import { notBuilt } from "./ui.js";

export function render(view) {
  notBuilt(view, "audit");
}
