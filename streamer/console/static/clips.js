// The clip library (#/clips): every clip (GET /clips, newest first: name, duration, size, who
// uploaded it and when), a search that ignores Vietnamese marks, and for operators the upload
// form with its progress bar (upload.js). "Air this clip" opens the composer with the clip
// chosen: the choice travels in sessionStorage (CLIP_CHOICE), read once by compose.js.

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { OPERATE, anywhere } from "./grants.js";
import { formatTime, t } from "./i18n.js";
import { store } from "./store.js";
import { showError } from "./ui.js";
import { fold, formatBytes, formatDuration, uploader } from "./upload.js";

/** sessionStorage key: the clip the composer should open with. */
export const CLIP_CHOICE = "loa.console.clip";

const page = { clips: null, fresh: "", upload: null };

export function render(view) {
  const mayUpload = anywhere(store.user, OPERATE);
  page.upload = mayUpload ? uploader("clip-upload", uploaded) : null;
  view.replaceChildren(
    h("div", { class: "page-head" },
      h("h1", { text: t("nav.clips") }),
      h("button", { type: "button", "data-testid": "clips-refresh", text: t("dash.refresh"), on: { click: () => load().catch(showError) } })),
    page.upload ? h("section", { class: "card" }, page.upload.element) : null,
    h("section", { class: "card", "aria-labelledby": "clips-title" },
      h("h2", { id: "clips-title", text: t("clips.library") }),
      h("div", { class: "field" },
        h("label", { for: "clips-search", text: t("clips.search") }),
        h("input", { id: "clips-search", type: "search", "data-testid": "clips-search", on: { input: renderList } })),
      h("div", { id: "clips-list", "data-testid": "clips-list", "aria-live": "polite" },
        h("p", { class: "loading", text: t("app.loading") }))));
  load().catch(showError);
}

export function leave() {
  if (page.upload) page.upload.abort();
  page.upload = null;
}

async function load() {
  const data = await api("GET", "/clips");
  page.clips = data.clips;
  renderList();
}

async function uploaded(clip) {
  page.fresh = clip.id;
  const search = $("clips-search");
  if (search) search.value = "";
  await load();
  const button = document.querySelector(`[data-testid="clip-air-${clip.id}"]`);
  if (button) button.focus();
}

function airClip(id) {
  sessionStorage.setItem(CLIP_CHOICE, id);
  location.hash = "#/compose";
}

function renderList() {
  const box = $("clips-list");
  if (!box || !page.clips) return;
  const q = fold($("clips-search").value.trim());
  const shown = page.clips.filter((c) => !q || fold(`${c.name} ${c.id} ${c.created_by}`).includes(q));
  box.dataset.count = String(shown.length);
  if (!page.clips.length) {
    box.replaceChildren(h("p", { class: "muted", "data-testid": "clips-empty", text: t("clips.empty") }));
    return;
  }
  if (!shown.length) {
    box.replaceChildren(h("p", { class: "muted", "data-testid": "clips-none", text: t("clips.none_match") }));
    return;
  }
  const mayAir = anywhere(store.user, OPERATE);
  const col = (key) => h("th", { scope: "col", text: t(key) });
  box.replaceChildren(h("table", { class: "cards" },
    h("thead", {}, h("tr", {},
      col("clips.name"), col("clips.seconds"), col("clips.size"), col("clips.by"), col("clips.when"),
      mayAir ? col("clips.actions") : null)),
    h("tbody", {}, shown.map((c) => h("tr", {
      "data-testid": `clip-${c.id}`, "data-clip": c.id, class: c.id === page.fresh ? "fresh" : "",
    },
    h("th", { scope: "row", "data-label": t("clips.name") },
      c.name || t("clips.no_name"), " ", h("span", { class: "zid", text: c.id.slice(0, 8) })),
    h("td", { "data-label": t("clips.seconds"), text: formatDuration(c.seconds) }),
    h("td", { "data-label": t("clips.size"), text: formatBytes(c.bytes) }),
    h("td", { "data-label": t("clips.by"), text: c.created_by || "—" }),
    h("td", { "data-label": t("clips.when"), text: formatTime(c.created, true) }),
    mayAir ? h("td", {},
      h("button", {
        type: "button", "data-testid": `clip-air-${c.id}`, text: t("clips.air"),
        "aria-label": t("clips.air_named", { name: c.name || c.id.slice(0, 8) }),
        on: { click: () => airClip(c.id) },
      })) : null)))));
}
