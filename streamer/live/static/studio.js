// The studio page's behaviour: sign in, zone tree, WebRTC microphone, push to talk.
//
// The streamer is the only judge of "on air": the indicator shows what the session's status
// (polled) or the talk request answered, never what the button alone suggests. Talk presses and
// releases are queued so that a quick press-release-press still ends in the state of the last
// gesture, and a release always reaches the server, also when the press is still in flight.

"use strict";

const API = "/api/v1";
const POLL_MS = 400;
const GATHER_TIMEOUT_MS = 5000;
const TOKEN_KEY = "loa.studio.token";
const NO_AUDIO_DBFS = -120;

const $ = (id) => document.getElementById(id);

const studio = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  sessionId: "",
  pc: null,
  stream: null,
  audio: null,
  meterTimer: 0,
  polling: false,
  wantTalk: false, // what the announcer's hand says
  talking: false, // what the server has accepted
  talkSeq: 0, // bumps on each gesture: answers to older polls are stale
  talkQueue: Promise.resolve(),
};

class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

async function api(method, path, body, options = {}) {
  const headers = {};
  if (studio.token) headers.Authorization = `Bearer ${studio.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(API + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), ...options,
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new ApiError(res.status, (data && data.error) || `HTTP ${res.status}`,
                             (data && data.field) || "");
    if (res.status === 401 && path !== "/login") signedOut(err);
    throw err;
  }
  return data;
}

// ---- messages ------------------------------------------------------------------------------

const STATUS_WORDS = {
  400: "Dữ liệu không hợp lệ (bad request)",
  401: "Chưa đăng nhập được (not signed in)",
  403: "Không có quyền (not allowed)",
  404: "Không tìm thấy (not found)",
  409: "Không thực hiện được lúc này (conflict)",
  503: "Máy chủ chưa sẵn sàng (unavailable)",
};

function showError(err) {
  const box = $("error");
  if (!err) {
    box.textContent = "";
    return;
  }
  if (err instanceof ApiError) {
    const head = STATUS_WORDS[err.status] || `Lỗi ${err.status}`;
    box.textContent = `${head}: ${err.message}${err.field ? ` [${err.field}]` : ""}`;
  } else {
    box.textContent = err.message || String(err);
  }
}

function runAction(action) {
  return async (event) => {
    if (event) event.preventDefault();
    showError(null);
    try {
      await action(event);
    } catch (err) {
      showError(err);
    }
  };
}

// ---- sign in ---------------------------------------------------------------------------------

async function signIn() {
  const data = await api("POST", "/login", {
    user: $("login-user").value.trim(), password: $("login-password").value,
  });
  studio.token = data.token;
  sessionStorage.setItem(TOKEN_KEY, data.token);
  $("login-password").value = "";
  await openDesk(data.user);
}

function signedOut(err) {
  studio.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  hangUp();
  $("desk").hidden = true;
  $("logout").hidden = true;
  $("whoami").hidden = true;
  $("login").hidden = false;
  if (err) showError(err);
}

async function signOut() {
  await disconnect();
  await api("POST", "/logout").catch(() => {});
  signedOut(null);
}

async function openDesk(user) {
  const me = user || await api("GET", "/me");
  $("whoami").textContent = me.full_name ? `${me.full_name} (${me.name})` : me.name;
  $("whoami").hidden = false;
  $("logout").hidden = false;
  $("login").hidden = true;
  $("desk").hidden = false;
  if (!$("label").value) $("label").value = `Phòng thu: ${me.full_name || me.name}`;
  await loadZones();
}

// ---- zones -----------------------------------------------------------------------------------

async function loadZones() {
  const box = $("zones");
  box.dataset.state = "loading";
  const data = await api("GET", "/zones");
  box.replaceChildren(zoneList(data.zones));
  box.dataset.state = "loaded";
}

function zoneList(nodes) {
  const ul = document.createElement("ul");
  for (const zone of nodes) {
    const li = document.createElement("li");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = `zone-${zone.id}`;
    box.value = zone.id;
    box.dataset.testid = `zone-${zone.id}`;
    box.addEventListener("change", () => coverChildren(li, box.checked));
    const label = document.createElement("label");
    label.htmlFor = box.id;
    label.textContent = zone.name;
    if (zone.quiet_hours_in_force) {
      label.title = `Giờ yên lặng (quiet hours) ${zone.quiet_hours_in_force}`;
      label.append(` · ${zone.quiet_hours_in_force}`);
    }
    li.append(box, " ", label);
    if (zone.children && zone.children.length) li.append(zoneList(zone.children));
    ul.append(li);
  }
  return ul;
}

// A ticked zone covers its subtree: its descendants show ticked and cannot be picked apart.
function coverChildren(li, covered) {
  for (const box of li.querySelectorAll(":scope > ul input[type=checkbox]")) {
    box.checked = covered;
    box.disabled = covered;
  }
}

function chosenZones() {
  return [...$("zones").querySelectorAll("input[type=checkbox]:checked:not(:disabled)")]
    .map((box) => box.value);
}

// ---- microphone ------------------------------------------------------------------------------

function setMic(state, text, sessionId = "") {
  const el = $("mic-status");
  el.dataset.state = state;
  el.dataset.session = sessionId;
  el.textContent = text;
  $("talk").disabled = state !== "connected";
  $("connect").hidden = state !== "off";
  $("disconnect").hidden = state === "off";
}

async function connect() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("Trình duyệt chỉ cho dùng micro khi trang mở qua HTTPS hoặc localhost. "
                    + "(The microphone needs HTTPS or localhost.)");
  }
  setMic("connecting", "Đang kết nối… (connecting)");
  try {
    studio.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    startMeter(studio.stream);
    const pc = new RTCPeerConnection({ iceServers: [] });
    studio.pc = pc;
    for (const track of studio.stream.getAudioTracks()) pc.addTrack(track, studio.stream);
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringComplete(pc);
    const session = await api("POST", "/studio/sessions", { sdp: pc.localDescription.sdp });
    studio.sessionId = session.id;
    await pc.setRemoteDescription({ type: "answer", sdp: session.sdp });
    pollSession();
  } catch (err) {
    await disconnect();
    throw err;
  }
}

// Non-trickle signalling: the offer goes out once, with every candidate in it.
function gatheringComplete(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS); // send what has been gathered
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

async function disconnect() {
  setTalk(false);
  await studio.talkQueue;
  const id = studio.sessionId;
  studio.sessionId = ""; // stops the status polls
  // the streamer hangs up first, so that our closing peer connection does not race it
  if (id) await api("DELETE", `/studio/sessions/${id}`).catch(() => {});
  hangUp();
}

function hangUp() {
  studio.sessionId = "";
  studio.polling = false;
  studio.talking = false;
  studio.wantTalk = false;
  if (studio.pc) studio.pc.close();
  studio.pc = null;
  if (studio.stream) for (const track of studio.stream.getTracks()) track.stop();
  studio.stream = null;
  stopMeter();
  setMic("off", "Chưa kết nối (not connected)");
  $("server-level").value = -60;
  showOnAir(null);
  pressed(false);
}

function startMeter(stream) {
  studio.audio = new AudioContext();
  const analyser = studio.audio.createAnalyser();
  analyser.fftSize = 2048;
  studio.audio.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  studio.meterTimer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    const rms = Math.sqrt(sum / samples.length);
    $("mic-level").value = rms > 0 ? Math.max(20 * Math.log10(rms), -60) : -60;
  }, 100);
}

function stopMeter() {
  clearInterval(studio.meterTimer);
  if (studio.audio) studio.audio.close();
  studio.audio = null;
  $("mic-level").value = -60;
}

// ---- status from the streamer ----------------------------------------------------------------

async function pollSession() {
  studio.polling = true;
  const id = studio.sessionId;
  while (studio.polling && studio.sessionId === id) {
    const seq = studio.talkSeq;
    try {
      const s = await api("GET", `/studio/sessions/${id}`);
      if (studio.sessionId !== id) break;
      showSession(s, seq === studio.talkSeq);
    } catch (err) {
      if (studio.sessionId !== id) break;
      if (err instanceof ApiError && err.status === 404) {
        hangUp();
        showError(new Error("Phiên micro đã đóng (the microphone session was closed)."));
        break;
      }
      if (!(err instanceof ApiError && err.status === 401)) showError(err);
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function showSession(s, current) {
  if (s.connected) setMic("connected", "Đã kết nối (connected)", s.id);
  else setMic("connecting", "Đang kết nối… (connecting)", s.id);
  $("server-level").value = Math.max(s.level_dbfs ?? NO_AUDIO_DBFS, -60);
  // a press, a release or a talk answer came while this status was on its way: it is stale
  if (!current) return;
  if (studio.talking && !s.talking) {
    // the talk ended on the server (stopped by an operator, the session lost): follow it
    studio.talking = false;
    studio.wantTalk = false;
    pressed(false);
  }
  if (studio.talking) showOnAir(s.talking);
  else if (!studio.wantTalk) showOnAir(null); // else a press is still being answered
}

const AIR_WORDS = {
  off: ["Đang tắt", "Off air"],
  requested: ["Đang yêu cầu…", "Requesting"],
  on_air: ["ĐANG PHÁT", "ON AIR"],
  waiting: ["Đang chờ (mức cao hơn đang phát)", "Waiting: a higher priority is on air"],
  pending_approval: ["Chờ duyệt", "Waiting for approval"],
};

function showOnAir(broadcast) {
  const el = $("on-air");
  const state = broadcast ? broadcast.state : "off";
  const [vi, en] = AIR_WORDS[state] || [state, ""];
  el.dataset.state = state;
  el.dataset.broadcast = broadcast && broadcast.id ? broadcast.id : "";
  const channels = state === "on_air" && broadcast.on_air_channels
    ? ` · ${broadcast.on_air_channels} kênh` : "";
  el.textContent = `${vi}${channels} `;
  const hint = document.createElement("span");
  hint.className = "en";
  hint.textContent = en;
  el.append(hint);
}

// ---- push to talk ----------------------------------------------------------------------------

function pressed(down) {
  $("talk").setAttribute("aria-pressed", String(down));
}

function setTalk(want) {
  if (want === studio.wantTalk) return;
  studio.wantTalk = want;
  studio.talkSeq += 1;
  pressed(want);
  if (want) {
    showError(null);
    showOnAir({ state: "requested" });
  }
  studio.talkQueue = studio.talkQueue.then(syncTalk).catch((err) => {
    studio.wantTalk = false;
    pressed(false);
    showOnAir(null);
    showError(err);
  });
}

// Bring the server to the hand's state; queued, so each runs after the previous answer.
async function syncTalk() {
  const id = studio.sessionId;
  if (!id) return;
  if (studio.wantTalk && !studio.talking) {
    const zones = chosenZones();
    if (!zones.length) throw new Error("Chọn ít nhất một khu vực. (Pick at least one zone.)");
    const broadcast = await api("POST", `/studio/sessions/${id}/talk`, {
      zones, priority: $("priority").value, label: $("label").value.trim(),
    });
    studio.talking = true;
    studio.talkSeq += 1;
    if (studio.wantTalk) showOnAir(broadcast);
  } else if (!studio.wantTalk && studio.talking) {
    studio.talking = false;
    studio.talkSeq += 1;
    try {
      await api("DELETE", `/studio/sessions/${id}/talk`);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 409)) throw err; // 409: already ended
    }
    showOnAir(null);
  }
}

function holdMode() {
  return document.querySelector("input[name=mode]:checked").value === "hold";
}

function wireTalkButton() {
  const button = $("talk");
  button.addEventListener("pointerdown", (e) => {
    if (!holdMode() || e.button !== 0 || button.disabled) return;
    e.preventDefault();
    button.setPointerCapture(e.pointerId);
    setTalk(true);
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
    button.addEventListener(type, () => {
      if (holdMode()) setTalk(false);
    });
  }
  button.addEventListener("click", () => {
    if (!holdMode()) setTalk(!studio.wantTalk);
  });
  button.addEventListener("contextmenu", (e) => e.preventDefault()); // long touch
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => {
      setTalk(false);
      $("talk-text").textContent = holdMode() ? "Giữ để nói" : "Bấm để bật / tắt";
      $("talk-hint").textContent = holdMode() ? "Hold (or Space) to talk"
        : "Press (or Space) on, again off";
    });
  }
}

// The space bar talks unless the announcer is typing or on another control.
function spaceTalks(e) {
  if (e.code !== "Space" || $("talk").disabled) return false;
  const target = e.target;
  return target === $("talk") || !target.closest("input, select, textarea, button, a");
}

function wireSpaceBar() {
  document.addEventListener("keydown", (e) => {
    if (!spaceTalks(e)) return;
    e.preventDefault();
    if (e.repeat) return;
    setTalk(holdMode() ? true : !studio.wantTalk);
  });
  document.addEventListener("keyup", (e) => {
    if (!spaceTalks(e)) return;
    e.preventDefault();
    if (holdMode()) setTalk(false);
  });
  // a key or button released outside the window is never seen: let go on losing focus
  window.addEventListener("blur", () => {
    if (holdMode()) setTalk(false);
  });
}

// ---- start -----------------------------------------------------------------------------------

function start() {
  $("login").addEventListener("submit", runAction(signIn));
  $("logout").addEventListener("click", runAction(signOut));
  $("connect").addEventListener("click", runAction(connect));
  $("disconnect").addEventListener("click", runAction(disconnect));
  wireTalkButton();
  wireSpaceBar();
  // closing the tab hangs up at once instead of leaving the streamer to time the call out
  window.addEventListener("pagehide", () => {
    if (studio.sessionId) {
      api("DELETE", `/studio/sessions/${studio.sessionId}`, undefined, { keepalive: true })
        .catch(() => {});
    }
  });
  if (studio.token) runAction(() => openDesk(null))();
  else signedOut(null);
}

start();
