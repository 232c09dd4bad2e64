// Listen-in (#/listen): hear any channel this user can see, as the speakers hear it. POST
// /listen gives a listen token for one channel (six hours; the console's own bearer token
// never goes in a URL), and an <audio> element plays /listen/{channel}.ogg?token=… from this
// streamer. A level meter (Web Audio analyser) shows that sound arrives even with the volume
// down; the same analyser gives the dominant frequency (peakHz) that the tests read.

import { api } from "./api.js";
import { $, h } from "./dom.js";
import { formatTime, t } from "./i18n.js";
import { store, zoneName } from "./store.js";
import { showError } from "./ui.js";

const player = { ctx: null, analyser: null, source: null, audio: null, timer: null };

export function render(view) {
  const channels = [...store.onAir.keys()].sort();
  view.replaceChildren(
    h("h1", { text: t("nav.listen") }),
    h("p", { class: "hint", text: t("listen.hint") }),
    h("div", { class: "field" },
      h("label", { for: "listen-channel", text: t("listen.channel") }),
      h("select", { id: "listen-channel", "data-testid": "listen-channel", "aria-describedby": "listen-channel-error" },
        channels.map((c) => h("option", { value: c, text: label(c) }))),
      h("p", { class: "field-error", id: "listen-channel-error", "data-error-for": "channel" })),
    h("p", { class: "actions" },
      h("button", { type: "button", class: "primary", "data-testid": "listen-play", disabled: !channels.length, text: t("listen.play"), on: { click: play } }), " ",
      h("button", { type: "button", "data-testid": "listen-stop", disabled: true, text: t("listen.stop"), on: { click: stop } })),
    channels.length ? null : h("p", { class: "notice", text: t("listen.no_channels") }),
    h("section", { class: "card", id: "listen-now", "data-testid": "listen-now", hidden: true, "aria-live": "polite" },
      h("p", { id: "listen-what", "data-testid": "listen-what" }),
      h("audio", { id: "listen-audio", "data-testid": "listen-audio", controls: true, preload: "none" }),
      h("div", { class: "field" },
        h("label", { for: "listen-level", text: t("listen.level") }),
        h("meter", { id: "listen-level", "data-testid": "listen-level", min: -60, max: 0, low: -40, high: -6, optimum: -20, value: -60 }),
        h("span", { id: "listen-level-text", class: "muted small", "aria-hidden": "true" })),
      h("p", { id: "listen-expires", class: "muted small" })));
}

export function update(what) {
  if (what === "onair" && $("listen-channel")) {
    for (const o of $("listen-channel").options) o.textContent = label(o.value);
    if (player.audio) $("listen-what").textContent = label($("listen-channel").value);
  }
}

export function leave() {
  stop();
}

function label(channel) {
  const b = store.onAir.get(channel);
  const playing = b ? ` — ${b.label || t(`source.${b.kind || "tone"}`)}` : ` — ${t("dash.silent")}`;
  return `${zoneName(channel)} (${channel})${playing}`;
}

async function play() {
  stop();
  showError(null);
  const channel = $("listen-channel").value;
  $("listen-channel-error").textContent = "";
  let grant;
  try {
    grant = await api("POST", "/listen", { channel });
  } catch (err) {
    $("listen-channel-error").textContent = err.message;
    return;
  }
  const audio = $("listen-audio");
  if (!audio) return;
  player.audio = audio;
  player.ctx = player.ctx || new AudioContext();
  if (!player.source) { // one source per element for its lifetime (Web Audio's rule)
    player.source = player.ctx.createMediaElementSource(audio);
    player.analyser = player.ctx.createAnalyser();
    player.analyser.fftSize = 4096;
    player.source.connect(player.analyser).connect(player.ctx.destination);
  }
  audio.src = grant.path;
  $("listen-now").hidden = false;
  $("listen-what").textContent = label(channel);
  $("listen-expires").textContent = t("listen.expires", { when: formatTime(grant.expires, true) });
  $("listen-now").dataset.channel = channel;
  document.querySelector('[data-testid="listen-stop"]').disabled = false;
  await player.ctx.resume();
  await audio.play().catch((err) => showError(err));
  player.timer = setInterval(meter, 250);
}

function stop() {
  if (player.timer) clearInterval(player.timer);
  player.timer = null;
  if (player.audio) {
    player.audio.pause();
    player.audio.removeAttribute("src");
    player.audio.load(); // closes the stream
    player.audio = null;
  }
  const button = document.querySelector('[data-testid="listen-stop"]');
  if (button) button.disabled = true;
}

function meter() {
  const el = $("listen-level");
  if (!el || !player.analyser) return;
  const buf = new Float32Array(player.analyser.fftSize);
  player.analyser.getFloatTimeDomainData(buf);
  const rms = Math.sqrt(buf.reduce((s, x) => s + x * x, 0) / buf.length);
  const db = Math.max(-60, 20 * Math.log10(rms || 1e-6));
  el.value = db;
  $("listen-level-text").textContent = `${Math.round(db)} dBFS`;
}

/** The frequency (Hz) of the loudest bin of what plays now (for tests and the curious). */
export function peakHz() {
  if (!player.analyser) return 0;
  const bins = new Float32Array(player.analyser.frequencyBinCount);
  player.analyser.getFloatFrequencyData(bins);
  let best = 1;
  for (let i = 2; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
  return (best * player.ctx.sampleRate) / player.analyser.fftSize;
}
