// The review station's behaviour: the live queue, keyboard shortcuts, zoom and pan, the overlay's opacity,
// the reference part, undo, the theme.
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

// Zoom and pan, the original and the overlay together: one zoom factor (1 = fit) and one centre in image
// pixels for every view; previews first, the full-resolution pictures once a preview would be enlarged.
function setupViewer() {
  const pictures = document.getElementById("pictures");
  const views = Array.from(document.querySelectorAll(".view"));
  if (!pictures || !views.length) return null;
  const level = document.getElementById("zoom-level");
  let width = Number(pictures.dataset.width), height = Number(pictures.dataset.height);
  let zoom = 1, cx = width / 2, cy = height / 2, full = false;
  // one scale for every view (the narrowest decides), so that the same pixel lies under the same point
  const fitScale = () => Math.min(...views.map(v => Math.min(v.clientWidth / width, v.clientHeight / height)));
  function draw() {
    if (!(width > 0 && height > 0)) return;
    cx = Math.max(0, Math.min(width, cx));
    cy = Math.max(0, Math.min(height, cy));
    let shown = 1;
    views.forEach(v => {
      const k = fitScale() * zoom;  // screen (CSS) pixels per image pixel
      shown = k;
      const layer = v.querySelector(".layer");
      layer.style.width = width * k + "px";
      layer.style.height = height * k + "px";
      layer.style.transform = `translate(${v.clientWidth / 2 - cx * k}px, ${v.clientHeight / 2 - cy * k}px)`;
      v.classList.toggle("pixelated", k > 1.001);  // enlarged: show the pixels as they are
    });
    level.textContent = zoom === 1 ? `fit (${Math.round(shown * 100)} %)` : `${Math.round(shown * 100)} %`;
    const needed = width * shown * (window.devicePixelRatio || 1);
    if (!full && needed > Math.min(width, 1600) * 1.05) {  // a preview would be enlarged: load the real pixels
      full = true;
      document.querySelectorAll(".view img[data-full]").forEach(img => {
        if (!img.classList.contains("hidden") || img.getAttribute("src")) img.src = img.dataset.full;
      });
    }
    pictures.dataset.full = full ? "1" : "";
  }
  function zoomAt(factor, px, py, v) {  // keep the image point under (px, py) of view v where it is
    const k = fitScale() * zoom;
    const ix = cx + (px - v.clientWidth / 2) / k, iy = cy + (py - v.clientHeight / 2) / k;
    zoom = Math.max(1, Math.min(zoom * factor, 64 / fitScale()));
    const k2 = fitScale() * zoom;
    cx = ix - (px - v.clientWidth / 2) / k2;
    cy = iy - (py - v.clientHeight / 2) / k2;
    if (zoom === 1) { cx = width / 2; cy = height / 2; }
    draw();
  }
  const centre = factor => zoomAt(factor, views[0].clientWidth / 2, views[0].clientHeight / 2, views[0]);
  const api = {
    zoomIn: () => centre(1.5),
    zoomOut: () => centre(1 / 1.5),
    fit: () => { zoom = 1; cx = width / 2; cy = height / 2; draw(); },
    real: () => { zoom = Math.max(1, 1 / fitScale()); draw(); },
    pan: (dx, dy) => { const k = fitScale() * zoom;
      cx += dx * views[0].clientWidth / k; cy += dy * views[0].clientHeight / k; draw(); },
    isFull: () => full,
    state: () => ({zoom, cx, cy, full, scale: fitScale() * zoom}),
  };
  views.forEach(v => {
    v.addEventListener("wheel", e => {
      e.preventDefault();
      const r = v.getBoundingClientRect();
      zoomAt(e.deltaY < 0 ? 1.25 : 1 / 1.25, e.clientX - r.left, e.clientY - r.top, v);
    }, {passive: false});
    let drag = null;
    v.addEventListener("pointerdown", e => {
      drag = {x: e.clientX, y: e.clientY}; v.setPointerCapture(e.pointerId); v.classList.add("dragging");
    });
    v.addEventListener("pointermove", e => {
      if (!drag) return;
      const k = fitScale() * zoom;
      cx -= (e.clientX - drag.x) / k; cy -= (e.clientY - drag.y) / k;
      drag = {x: e.clientX, y: e.clientY};
      draw();
    });
    const end = () => { drag = null; v.classList.remove("dragging"); };
    v.addEventListener("pointerup", end);
    v.addEventListener("pointercancel", end);
    v.addEventListener("dblclick", e => { const r = v.getBoundingClientRect();
      zoomAt(2, e.clientX - r.left, e.clientY - r.top, v); });
  });
  const buttons = {"zoom-in": api.zoomIn, "zoom-out": api.zoomOut, "zoom-fit": api.fit, "zoom-real": api.real};
  Object.entries(buttons).forEach(([id, f]) => { const b = document.getElementById(id); if (b) b.addEventListener("click", f); });
  if (!(width > 0 && height > 0)) {  // no size from the header: take the preview's once it has loaded
    const first = views[0].querySelector("img");
    first.addEventListener("load", () => { width = first.naturalWidth; height = first.naturalHeight;
      cx = width / 2; cy = height / 2; draw(); }, {once: true});
  }
  window.addEventListener("resize", draw);
  draw();
  window.siseViewer = api;  // for the browser tests
  return api;
}

function setupPart() {
  const overlay = document.getElementById("overlay");
  const slider = document.getElementById("opacity");
  const viewer = setupViewer();
  const go = id => { const a = document.getElementById(id); if (a) window.location = a.href; };
  if (slider && overlay) slider.addEventListener("input", () => { overlay.style.opacity = slider.value / 100; });
  const toggle = () => {
    if (!slider || !overlay) return;
    slider.value = slider.value > 0 ? 0 : 100;
    overlay.style.opacity = slider.value / 100;
  };
  const toggleButton = document.getElementById("toggle");
  if (toggleButton) toggleButton.addEventListener("click", toggle);
  const reference = document.getElementById("reference");
  const original = document.getElementById("original");
  const showReference = () => {  // the left picture: the original, or a good part to compare with
    if (!reference || !original) return;
    if (!reference.getAttribute("src")) reference.src = viewer && viewer.isFull() ? reference.dataset.full : reference.dataset.src;
    const on = reference.classList.toggle("hidden") === false;
    original.classList.toggle("hidden", on);
    document.getElementById("left-caption").classList.toggle("hidden", on);
    document.getElementById("reference-caption").classList.toggle("hidden", !on);
  };
  const referenceButton = document.getElementById("reference-toggle");
  if (referenceButton) referenceButton.addEventListener("click", showReference);
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
    const src = choices[shown].dataset.src;
    if (src.endsWith("size=")) {  // a picture of the part: as sharp as the zoom needs
      overlay.dataset.full = src + "full";
      overlay.src = src + (viewer && viewer.isFull() ? "full" : "preview");
    } else overlay.src = src;
  };
  choices.forEach((b, i) => b.addEventListener("click", () => show(i)));
  const label = document.getElementById("label");
  const comment = document.getElementById("comment");
  const verdictKeys = {};
  document.querySelectorAll("main button[data-key]").forEach(b => { if (!b.disabled) verdictKeys[b.dataset.key] = b; });
  if (comment) comment.addEventListener("keydown", e => {
    if (e.key === "Enter" || e.key === "Escape") { e.preventDefault(); comment.blur(); }  // back to the keys
  });
  const pan = {ArrowLeft: [-0.2, 0], ArrowRight: [0.2, 0], ArrowUp: [0, -0.2], ArrowDown: [0, 0.2]};
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
    if (viewer && pan[e.key]) { e.preventDefault(); viewer.pan(...pan[e.key]); return; }
    if (e.key === "j") go("next");
    else if (e.key === "k") go("prev");
    else if (e.key === "o") toggle();
    else if (e.key === "r") showReference();
    else if (e.key === "d") show(shown + 1);
    else if (e.key === "a") show(0);
    else if (viewer && (e.key === "+" || e.key === "=")) viewer.zoomIn();
    else if (viewer && e.key === "-") viewer.zoomOut();
    else if (viewer && e.key === "f") viewer.fit();
    else if (viewer && e.key === "0") viewer.real();
    else if (e.key === "l" && layers) showLayers();
    else if (e.key === "c" && comment) { e.preventDefault(); comment.focus(); }
  });
}

// Every page: u undoes the reviewer's last verdict, t switches the theme; a form is sent once (a second
// key press or a double click sends nothing).
function setupCommon() {
  const undo = document.getElementById("undo");
  const root = document.documentElement;
  const theme = document.getElementById("theme");
  const dark = () => root.dataset.theme ? root.dataset.theme === "dark"
    : window.matchMedia("(prefers-color-scheme: dark)").matches;
  const switchTheme = () => {
    root.dataset.theme = dark() ? "light" : "dark";
    localStorage.setItem("sise-theme", root.dataset.theme);
  };
  if (theme) theme.addEventListener("click", switchTheme);
  document.querySelectorAll("form[method=post]").forEach(form => {
    let sent = false;
    form.addEventListener("submit", e => { if (sent) e.preventDefault(); sent = true; });
  });
  document.addEventListener("keydown", e => {
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey || (e.target && e.target.tagName === "SELECT")) return;
    if (e.key === "u" && undo) { e.preventDefault(); undo.requestSubmit(); }
    else if (e.key === "t") switchTheme();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupCommon();
  const page = document.body.dataset.page;
  if (page === "queue") setupQueue();
  if (page === "part") setupPart();
});
