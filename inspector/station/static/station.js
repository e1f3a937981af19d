// The review station's few lines of behaviour: the live queue, keyboard shortcuts, the overlay's opacity.
"use strict";

function typing(event) {
  const t = event.target;
  return t && (t.tagName === "INPUT" && t.type !== "range" && t.type !== "checkbox" || t.tagName === "TEXTAREA");
}

function setupQueue() {
  const table = document.getElementById("queue");
  const body = document.getElementById("rows");
  let selected = -1;  // nothing until the operator presses j or k
  const rows = () => Array.from(body.querySelectorAll("tr[data-id]"));
  function select(k) {
    const all = rows();
    all.forEach(r => r.classList.remove("selected"));
    if (!all.length) return;
    selected = Math.max(0, Math.min(k, all.length - 1));
    all[selected].classList.add("selected");
    all[selected].scrollIntoView({block: "nearest"});
  }
  body.addEventListener("click", e => {
    const row = e.target.closest("tr[data-href]");
    if (row && e.target.tagName !== "A") window.location = row.dataset.href;
  });
  document.addEventListener("keydown", e => {
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "j") select(selected + 1);
    else if (e.key === "k") select(selected - 1);
    else if (e.key === "Enter" && selected >= 0 && rows()[selected]) window.location = rows()[selected].dataset.href;
  });
  const live = document.getElementById("live");
  async function refresh() {
    try {
      const response = await fetch(table.dataset.rowsUrl, {headers: {"Accept": "text/html"}});
      if (response.redirected && response.url.includes("/login")) {
        live.innerHTML = 'logged out: <a href="/login?next=/queue">log in again</a>';
        live.classList.add("stale");
        return;
      }
      if (response.redirected || !response.ok) throw new Error(response.status);
      const html = await response.text();
      if (html !== body.dataset.last) {
        const keep = selected >= 0 && rows()[selected] ? rows()[selected].dataset.id : null;
        body.innerHTML = html;
        body.dataset.last = html;
        const k = rows().findIndex(r => r.dataset.id === keep);
        if (keep !== null) select(k >= 0 ? k : selected);
        document.getElementById("total").textContent = response.headers.get("X-Queue-Total");
      }
      const waiting = document.getElementById("waiting");
      if (waiting) waiting.textContent = response.headers.get("X-Queue-Waiting");
      live.textContent = "live"; live.classList.remove("stale");
    } catch (err) {
      live.textContent = "not updating (station unreachable?)"; live.classList.add("stale");
    }
  }
  body.dataset.last = body.innerHTML;
  setInterval(refresh, 2000);
}

function setupPart() {
  const overlay = document.getElementById("overlay");
  const slider = document.getElementById("opacity");
  const go = id => { const a = document.getElementById(id); if (a) window.location = a.href; };
  if (slider && overlay) slider.addEventListener("input", () => { overlay.style.opacity = slider.value / 100; });
  const toggle = () => {
    if (!slider || !overlay) return;
    slider.value = slider.value > 0 ? 0 : 100;
    overlay.style.opacity = slider.value / 100;
  };
  const toggleButton = document.getElementById("toggle");
  if (toggleButton) toggleButton.addEventListener("click", toggle);
  const layers = document.getElementById("layers");
  const showLayers = () => {
    if (!layers.getAttribute("src")) layers.src = layers.dataset.src;  // loaded on demand only
    layers.classList.toggle("hidden");
  };
  const layersButton = document.getElementById("layers-button");
  if (layersButton) layersButton.addEventListener("click", showLayers);
  const choices = Array.from(document.querySelectorAll("#detections button"));
  let shown = 0;  // a detector's part: which map the overlay shows (0: all detections)
  const show = k => {
    if (!choices.length || !overlay) return;
    shown = (k + choices.length) % choices.length;
    choices.forEach((b, i) => b.classList.toggle("chosen", i === shown));
    overlay.src = choices[shown].dataset.src;
  };
  choices.forEach((b, i) => b.addEventListener("click", () => show(i)));
  const label = document.getElementById("label");
  const form = document.getElementById("review");
  const comment = document.getElementById("comment");
  const verdictKeys = {};
  document.querySelectorAll("button[data-key]").forEach(b => { verdictKeys[b.dataset.key] = b; });
  let sent = false;  // one verdict per page: a second key press (or a double click) sends nothing
  if (form) form.addEventListener("submit", e => {
    if (sent) { e.preventDefault(); return; }
    sent = true;
  });
  if (comment) comment.addEventListener("keydown", e => {
    if (e.key === "Enter" || e.key === "Escape") { e.preventDefault(); comment.blur(); }  // back to the keys
  });
  document.addEventListener("keydown", e => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target === label && (e.key === "Enter" || e.key === "3")) {
      e.preventDefault();
      if (verdictKeys["3"]) verdictKeys["3"].click();
      return;
    }
    if (typing(e) || e.target === label) return;
    const button = verdictKeys[e.key];
    if (e.key === "3" && label) { e.preventDefault(); label.focus(); return; }  // choose the class, then 3 or Enter
    if (button) { e.preventDefault(); button.click(); return; }
    if (e.key === "j") go("next");
    else if (e.key === "k") go("prev");
    else if (e.key === "o") toggle();
    else if (e.key === "d") show(shown + 1);
    else if (e.key === "a") show(0);
    else if (e.key === "l" && layers) showLayers();
    else if (e.key === "c") { const c = document.getElementById("comment"); if (c) { e.preventDefault(); c.focus(); } }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "queue") setupQueue();
  if (page === "part") setupPart();
});
