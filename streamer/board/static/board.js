// The kiosk page of an e-board: the zone's items, kept current over SSE (EventSource
// reconnects by itself after a drop; the footer says when the link is lost).
const zone = decodeURIComponent(location.pathname.split("/").pop());
const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
const q = "?token=" + encodeURIComponent(token);

function time(t) {
  return new Date(t * 1000).toLocaleString("vi-VN", { hour: "2-digit", minute: "2-digit",
    day: "2-digit", month: "2-digit", timeZone: "Asia/Ho_Chi_Minh" });
}

function show(state) {
  const main = $("items");
  main.replaceChildren();
  let emergency = false;
  for (const it of state.items) {
    const box = document.createElement("section");
    box.className = "item " + it.level;
    box.dataset.testid = "item";
    box.dataset.level = it.level;
    const h = document.createElement("h2");
    h.textContent = it.title || "Thông báo";
    box.append(h);
    if (it.body) {
      const p = document.createElement("p");
      p.textContent = it.body;
      box.append(p);
    }
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = "Từ " + time(it.start) + (it.expires ? " đến " + time(it.expires) : "");
    box.append(when);
    main.append(box);
    emergency = emergency || it.level === "emergency";
  }
  document.body.classList.toggle("emergency", emergency);
  $("empty").hidden = state.items.length > 0;
}

function tick() {
  $("clock").textContent = new Date().toLocaleTimeString("vi-VN",
    { hour: "2-digit", minute: "2-digit", second: "2-digit", timeZone: "Asia/Ho_Chi_Minh" });
}

function connect() {
  const es = new EventSource("/board/" + encodeURIComponent(zone) + "/events" + q);
  es.addEventListener("board", (e) => {
    show(JSON.parse(e.data));
    $("link").textContent = "Cập nhật lúc " + new Date().toLocaleTimeString("vi-VN");
    $("link").classList.remove("lost");
  });
  es.onerror = () => {
    $("link").textContent = "Mất kết nối, đang thử lại…";
    $("link").classList.add("lost");
  };
}

$("zone").textContent = "Bản tin điện tử — " + zone;
tick();
setInterval(tick, 1000);
connect();
