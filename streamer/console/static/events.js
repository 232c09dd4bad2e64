// The live event stream, GET /api/v1/events (docs/api.md), read with fetch() and a stream
// reader: EventSource cannot send the Authorization header, and the token must never go in a
// URL. SSE framing per the HTML standard: "event:", "data:" and "id:" lines, a blank line ends
// an event, a line starting with ":" is a comment (the server's ping).
//
// Rules: a dropped or failed stream is opened again after a backoff (1 s doubling to 30 s,
// with jitter; back to 1 s once "hello" arrives); a stream that goes silent for STALL_MS (no
// event, no ping) is treated as dropped. A 404 means this streamer has no event stream: the
// console keeps its REST snapshot and says so, without retrying. A 401 means signed out.

import { API, authHeaders, session } from "./api.js";

const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const STALL_MS = 45000; // three missed pings

/** Feed text in, get complete events out: {event, id, data}. */
export class SseParser {
  constructor() {
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = "";
  }

  push(text) {
    this.buffer += text;
    const out = [];
    let nl;
    while ((nl = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      if (this.buffer[nl] === "\r" && nl === this.buffer.length - 1) break; // "\r\n" split in two
      const line = this.buffer.slice(0, nl);
      this.buffer = this.buffer.slice(nl + (this.buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (this.data.length) out.push({ event: this.event || "message", id: this.id, data: this.data.join("\n") });
        this.reset();
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") this.event = value;
      else if (field === "data") this.data.push(value);
      else if (field === "id") this.id = value;
    }
    return out;
  }
}

export class EventStream {
  /** onEvent(name, data), onState("connecting" | "live" | "reconnecting" | "unavailable" | "off") */
  constructor({ onEvent, onState }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.controller = null;
    this.stopped = true;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.run();
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
    this.onState("off");
  }

  async run() {
    let attempt = 0;
    while (!this.stopped) {
      this.onState(attempt ? "reconnecting" : "connecting");
      const outcome = await this.once(() => { attempt = 0; });
      if (outcome === "final" || this.stopped) return;
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
      attempt = Math.min(attempt + 1, 10);
      this.onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay * (0.5 + Math.random() / 2)));
    }
  }

  /** One connection; "final" when there is no point retrying. */
  async once(onHello) {
    const controller = new AbortController();
    this.controller = controller;
    let stall = 0;
    const watch = () => {
      clearTimeout(stall);
      stall = setTimeout(() => controller.abort(), STALL_MS);
    };
    try {
      watch();
      const res = await fetch(`${API}/events`, {
        headers: { ...authHeaders(), Accept: "text/event-stream" },
        cache: "no-store", signal: controller.signal,
      });
      if (res.status === 404) {
        this.onState("unavailable");
        return "final";
      }
      if (res.status === 401) {
        if (session.onSignedOut) session.onSignedOut(null);
        return "final";
      }
      if (!res.ok || !res.body) return "retry";
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new SseParser();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return "retry";
        watch();
        for (const ev of parser.push(value)) {
          let data;
          try {
            data = JSON.parse(ev.data);
          } catch {
            console.warn("events: not JSON", ev.event, ev.data);
            continue;
          }
          if (ev.event === "hello") {
            onHello();
            this.onState("live");
          }
          this.onEvent(ev.event, data);
        }
      }
    } catch (err) {
      if (!this.stopped) console.info("events: stream dropped", err && err.message);
      return "retry";
    } finally {
      clearTimeout(stall);
    }
  }
}
