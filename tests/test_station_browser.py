"""The review station end to end in a real browser: `inspector station --watch` as a separate process,
Debian's Chromium driven by Playwright. An operator logs in, sees parts arrive in the queue without
reloading, overrules one with a key, finds the verdict and its history after a reload, and exports the
dataset. The database and the downloaded ZIP are then checked directly.

Needs /usr/bin/chromium (`apt-get install chromium`; `.ci/run` installs it). Under CI=true a missing
browser fails the test instead of skipping it. ``STATION_SCREENSHOTS=docs/screenshots`` also saves the
screenshots that the README shows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
EXAMPLE = Path(__file__).resolve().parent.parent / "inspector" / "example"
CONFIG = EXAMPLE / "config.yaml"
SAMPLES = EXAMPLE / "samples"
PASSWORD = "line-3-quality"
HOSTILE = "<img src=x onerror=alert(1)>.png"

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs it with apt-get install -y chromium")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inspector(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspector", *args], check=False, capture_output=True,
                          text=True, timeout=120, **kwargs)


def _start(tmp_path: Path, out: Path, inbox: Path, config: Path = CONFIG) -> tuple[str, subprocess.Popen]:
    """`inspector station --watch` as a subprocess; returns (base URL, process) once /healthz answers."""
    port = _free_port()
    log = open(tmp_path / "station.log", "a")  # noqa: SIM115 - the child holds it; closed with the test
    proc = subprocess.Popen([sys.executable, "-m", "inspector", "station", "-c", str(config),
                             "--out", str(out), "--watch", str(inbox), "--port", str(port),
                             "--settle", "0.5"],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return base, proc
        except OSError:
            pass
        assert proc.poll() is None, (tmp_path / "station.log").read_text()
        assert time.monotonic() < deadline, "the station did not answer /healthz within 90 s"
        time.sleep(0.3)


@pytest.fixture
def station(tmp_path):
    """A running station watching ``in``; yields (base URL, out folder, in folder, process)."""
    out, inbox = tmp_path / "station", tmp_path / "in"
    inbox.mkdir()
    added = _inspector("station", "add-user", "quality", "--role", "admin", "--out", str(out),
                       "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    base, proc = _start(tmp_path, out, inbox)
    yield base, out, inbox, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _drop(inbox: Path, sample: str, name: str | None = None) -> None:
    """Put an image into the watched folder the way a camera PC does: written aside, then renamed in."""
    part = inbox / f".{sample}.part"
    shutil.copyfile(SAMPLES / f"{sample}.png", part)
    os.rename(part, inbox / (name or f"{sample}.png"))


def test_an_operator_reviews_a_part_in_the_browser(station, tmp_path):
    base, out, inbox, proc = station
    shots = Path(os.environ.get("STATION_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    dialogs = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

        # log in: the queue sends an anonymous visitor to the log-in page, and back after it
        page.goto(base + "/queue")
        assert "/login" in page.url
        page.fill("input[name=username]", "quality")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/queue")
        assert page.locator("tr[data-id]").count() == 0

        # parts arrive in the watched folder while the page stays open: they appear without a reload
        _drop(inbox, "ok")
        page.wait_for_selector("tr[data-id]", timeout=60_000)
        for sample in ("crack", "scratch", "stain", "pits"):
            _drop(inbox, sample)
        _drop(inbox, "inclusion", HOSTILE)
        playwright.expect(page.locator("tr[data-id]")).to_have_count(6, timeout=90_000)
        rows = page.locator("tr[data-id]")
        assert rows.first.get_attribute("class") == "reject"  # rejects before the (older) good part
        assert rows.last.get_attribute("class") == "good"
        assert HOSTILE in page.inner_text("#rows")  # shown as text, never run

        # open the crack part from the queue and overrule it to good with key 2
        crack_row = page.locator("tr[data-id]", has_text="crack.png")
        crack_id = crack_row.get_attribute("data-id")
        crack_row.click()
        page.wait_for_url(f"{base}/parts/{crack_id}*")
        page.wait_for_load_state("load")
        widths = {image: page.locator(image).evaluate("e => e.complete && e.naturalWidth")
                  for image in ("#original", "#overlay")}  # both pictures arrived and decoded
        assert widths["#original"] == 128 and widths["#overlay"] % 128 == 0, widths  # small: drawn k× larger
        page.fill("#comment", "polishing mark, not a crack")
        page.keyboard.press("Enter")  # Enter in the comment records nothing: it hands the keys back
        page.wait_for_timeout(300)
        assert page.url.startswith(f"{base}/parts/{crack_id}") and page.locator(".saved").count() == 0
        page.keyboard.press("2")
        page.wait_for_selector(".saved")
        assert f"part #{crack_id} overrule → ok" in page.inner_text(".saved")

        # reload the crack part: the verdict and its history are there
        page.goto(f"{base}/parts/{crack_id}")
        page.reload()
        assert "Now: ok" in page.inner_text(".verdictline")
        history = page.inner_text("table.history")
        assert "quality" in history and "crack → ok" in history and "polishing mark" in history

        # j/k walk the queue; confirm the next part with key 1
        page.keyboard.press("j")
        page.wait_for_url(lambda url: f"/parts/{crack_id}" not in url)
        next_id = page.url.split("/parts/")[1].split("?")[0]
        page.keyboard.press("1")
        page.keyboard.press("1")  # a double press sends one verdict
        page.wait_for_selector(".saved")

        # the API's page works offline: Swagger UI from the station itself, nothing from elsewhere
        asked = []
        page.on("request", lambda request: asked.append(request.url))
        page.goto(base + "/docs")
        playwright.expect(page.locator(".opblock").first).to_be_visible(timeout=30_000)
        assert page.locator(".opblock").count() >= 7  # the line's API, health and metrics
        assert asked and all(url.startswith(base) for url in asked), asked

        page.goto(base + "/shift")
        assert "2" in page.inner_text(".cards")
        page.screenshot(path=str(shots / "shift.png"), full_page=True)

        # export the dataset as the admin
        page.goto(base + "/queue")
        with page.expect_download() as info:
            page.click("#export")
        archive = zipfile.ZipFile(info.value.path())
        browser.close()
    assert dialogs == []

    # the store holds exactly the two verdicts, appended, with who and what came before
    db = sqlite3.connect(out / "results.db")
    reviews = db.execute("SELECT result_id, verdict, label, previous_label, reviewer, note FROM reviews "
                         "ORDER BY id").fetchall()
    assert reviews[0] == (int(crack_id), "overrule", "ok", "crack", "quality", "polishing mark, not a crack")
    assert len(reviews) == 2 and reviews[1][0] == int(next_id) and reviews[1][1] == "confirm"
    assert db.execute("SELECT count(*) FROM results WHERE status = 'done'").fetchone()[0] == 6
    db.close()

    # the ZIP: the crack image (byte for byte) under ok/, and the CSV naming model and reviewer labels
    names = archive.namelist()
    crack_bytes = (SAMPLES / "crack.png").read_bytes()
    in_ok = [n for n in names if "/ok/" in n]
    assert len(in_ok) == 1 and archive.read(in_ok[0]) == crack_bytes
    labels = list(csv.DictReader(io.StringIO(archive.read(next(n for n in names if n.endswith("labels.csv")))
                                             .decode())))
    crack_row = next(r for r in labels if r["model_label"] == "crack")
    assert crack_row["reviewer_label"] == "ok" and crack_row["reviewer"] == "quality"
    assert crack_row["image_sha256"] == hashlib.sha256(crack_bytes).hexdigest()
    assert len(labels) == 2

    # SIGTERM: the station finishes and notes its runs as ended
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    db = sqlite3.connect(out / "results.db")
    assert db.execute("SELECT count(*) FROM runs WHERE ended_at IS NULL").fetchone()[0] == 0
    db.close()


def test_a_killed_station_loses_and_repeats_nothing(station, tmp_path):
    """SIGKILL while parts flow in, then a restart on the same folder: every image ends with exactly one
    result, in the done folder, and the verdict given before the kill is still there."""
    _, out, inbox, proc = station
    for k, sample in enumerate(("ok", "crack", "scratch", "stain", "pits", "inclusion") * 2):
        _drop(inbox, sample, f"part_{k:02d}.png")  # twelve files, six contents
    db_path = out / "results.db"
    deadline = time.monotonic() + 60
    while not (db_path.exists() and _done(db_path) >= 2):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = sqlite3.connect(db_path)
    first_id = first.execute("SELECT id FROM results WHERE status = 'done' ORDER BY id LIMIT 1").fetchone()[0]
    first.close()
    from inspector.store import Store, default_url
    with Store(default_url(str(out))) as store:
        store.add_review(first_id, verdict="inconclusive", reviewer="quality")
    proc.kill()  # no chance to finish anything
    proc.wait(timeout=30)
    _, proc = _start(tmp_path, out, inbox)
    deadline = time.monotonic() + 120
    while any(p.suffix == ".png" for p in inbox.iterdir()):
        assert time.monotonic() < deadline, "the restarted station did not take every image"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    db = sqlite3.connect(db_path)
    statuses = db.execute("SELECT status, count(*) FROM results GROUP BY status").fetchall()
    assert statuses == [("done", 6)]  # six contents, each once; nothing left running
    assert db.execute("SELECT count(*) FROM reviews WHERE result_id = ?", (first_id,)).fetchone()[0] == 1
    done = sorted(p.name for p in (out / "done").iterdir())
    assert done == [f"part_{k:02d}.png" for k in range(12)]
    for sha, in db.execute("SELECT image_sha256 FROM results"):  # artifacts complete and as recorded
        for path, digest in db.execute("SELECT a.path, a.sha256 FROM artifacts a JOIN results r "
                                       "ON r.id = a.result_id WHERE r.image_sha256 = ?", (sha,)):
            assert hashlib.sha256((out / path).read_bytes()).hexdigest() == digest
    assert not [p for p in (out / "images").iterdir() if p.name.startswith(".")]  # no temporaries left
    db.close()


def _done(db_path: Path) -> int:
    try:
        db = sqlite3.connect(db_path)
        try:
            return db.execute("SELECT count(*) FROM results WHERE status = 'done'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_an_operator_steps_through_a_detectors_boxes(tmp_path):
    """The bundled detector's station: a scene with several defects; the part page lists each detection,
    ``d`` shows each one's own map in turn (the picture changes), ``a`` all of them again."""
    out, inbox = tmp_path / "station", tmp_path / "in"
    inbox.mkdir()
    added = _inspector("station", "add-user", "quality", "--role", "admin", "--out", str(out),
                       "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    detector = EXAMPLE / "detector"
    base, proc = _start(tmp_path, out, inbox, detector / "config.yaml")
    shots = Path(os.environ.get("STATION_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(detector / "samples" / "scene_00500.png", inbox / ".scene.part")
        os.rename(inbox / ".scene.part", inbox / "scene.png")
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(base + "/login?next=/queue")
            page.fill("input[name=username]", "quality")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("tr[data-id]", timeout=90_000)
            part_id = page.locator("tr[data-id]").first.get_attribute("data-id")
            page.locator("tr[data-id]").first.click()
            page.wait_for_url(f"{base}/parts/*")
            page.wait_for_load_state("load")
            buttons = page.locator("#detections button")
            count = buttons.count()
            assert count >= 3, page.inner_text("main")  # "all", then at least two detections
            overlay = page.locator("#overlay")
            shown = [overlay.get_attribute("src")]
            pictures = [overlay.screenshot()]
            page.screenshot(path=str(shots / "detector_part.png"))
            for k in range(1, count):
                page.keyboard.press("d")
                playwright.expect(buttons.nth(k)).to_have_class("chosen")
                wanted = re.compile(rf"/parts/{part_id}/picture\?what=overlay\.{k}&size=(preview|full)$")
                playwright.expect(overlay).to_have_attribute("src", wanted)
                page.wait_for_function("() => document.getElementById('overlay').complete")
                shown.append(overlay.get_attribute("src"))
                pictures.append(overlay.screenshot())
            assert len(set(pictures)) == count  # each detection's own picture, not the same one again
            page.keyboard.press("a")
            playwright.expect(overlay).to_have_attribute("src", shown[0])
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


VISIBLE_TEXT_MIN = """() => {  // the smallest font size of any element showing text of its own, and where
  let min = 1e9, where = "";
  for (const el of document.querySelectorAll("body *")) {
    if (!el.getClientRects().length || ["SCRIPT", "STYLE", "OPTION"].includes(el.tagName)) continue;
    if (!Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const size = parseFloat(getComputedStyle(el).fontSize);
    if (size < min) { min = size; where = el.tagName + ": " + el.textContent.trim().slice(0, 40); }
  }
  return [min, where];
}"""


def _in_view(page, selector: str) -> bool:
    """Every element ``selector`` matches lies wholly inside the window, without scrolling."""
    size = page.viewport_size
    for k in range(page.locator(selector).count()):
        box = page.locator(selector).nth(k).bounding_box()
        if box is None or box["x"] < 0 or box["y"] < 0 or box["x"] + box["width"] > size["width"] + 0.5 \
                or box["y"] + box["height"] > size["height"] + 0.5:
            return False
    return True


def _big_png(path: Path, size=(2400, 1800)) -> None:
    import cv2
    import numpy as np

    image = cv2.resize(cv2.imread(str(SAMPLES / "scratch.png"), cv2.IMREAD_COLOR), size,
                       interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(5).integers(-4, 5, image.shape)
    cv2.imwrite(str(path), np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8))


def _views_aligned(page) -> bool:
    """The original and the overlay at the same scale, with the same image point at their views' centres."""
    boxes = page.evaluate("""() => Array.from(document.querySelectorAll('.view')).map(v => {
        const r = v.getBoundingClientRect(), l = v.querySelector('.layer').getBoundingClientRect();
        return [l.left - r.left - r.width / 2, l.top - r.top - r.height / 2, l.width, l.height]; })""")
    return len(boxes) == 2 and all(abs(a - b) < 0.5 for a, b in zip(*boxes))


def test_a_shift_at_the_station_zoom_reference_undo_bulk_failed_and_window_sizes(station, tmp_path):
    """What an operator does in a shift, in Chromium: a 2400x1800 part zoomed (wheel, keys, drag; the
    original and the overlay together; previews first, the real pixels once zoomed), a reference part
    beside a reject, a verdict undone with u, bulk confirm, a failed part acknowledged and explained
    again; the part page at 1366x768, 1024x768 and 1920x1080 (light and dark) shows the pictures, the
    verdict keys, the class scores and the regions without scrolling, no text under 14 px."""
    base, out, inbox, _ = station
    shots = Path(os.environ.get("STATION_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    for sample in ("ok", "crack", "stain", "pits"):
        _drop(inbox, sample)
    _big_png(tmp_path / "big.png")
    os.rename(tmp_path / "big.png", inbox / "big_scratch.png")
    (tmp_path / "broken").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    os.rename(tmp_path / "broken", inbox / "broken.png")
    db_path = out / "results.db"
    deadline = time.monotonic() + 120
    while not (db_path.exists() and _done(db_path) >= 5):
        assert time.monotonic() < deadline, "the station did not explain the parts"
        time.sleep(0.3)
    db = sqlite3.connect(db_path)
    ids = dict(db.execute("SELECT source_path, id FROM results"))
    part = {Path(k).name: v for k, v in ids.items()}
    db.close()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        page = context.new_page()
        page.goto(base + "/login")
        page.fill("input[name=username]", "quality")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/queue")
        playwright.expect(page.locator("td.thumb img")).to_have_count(5, timeout=60_000)  # the done parts
        page.wait_for_function("() => Array.from(document.querySelectorAll('td.thumb img'))"
                               ".every(i => i.complete && i.naturalWidth > 0)")

        # ---- zoom and pan on the 2400x1800 part
        page.goto(f"{base}/parts/{part['big_scratch.png']}")
        page.wait_for_load_state("load")
        original = page.locator("#original")
        assert "size=preview" in original.get_attribute("src")
        assert original.evaluate("e => e.naturalWidth") == 1600 and _views_aligned(page)
        def state():
            return page.evaluate("() => window.siseViewer.state()")

        fit = state()
        assert fit["zoom"] == 1 and not fit["full"]
        page.keyboard.press("+")
        assert not state()["full"]  # a 1600 px preview still has more pixels than the view shows
        for _ in range(3):
            page.keyboard.press("+")
        zoomed = state()
        assert zoomed["zoom"] == pytest.approx(1.5 ** 4) and zoomed["full"] and _views_aligned(page)
        for image in ("#original", "#view-overlay img.under", "#overlay"):
            playwright.expect(page.locator(image)).to_have_attribute("src", re.compile(r"size=full$"))
        page.wait_for_function("() => document.getElementById('original').naturalWidth === 2400")
        view = page.locator("#view-original").bounding_box()
        page.mouse.move(view["x"] + 200, view["y"] + 150)
        page.mouse.down()
        page.mouse.move(view["x"] + 100, view["y"] + 100, steps=5)
        page.mouse.up()
        dragged = state()
        assert dragged["cx"] == pytest.approx(zoomed["cx"] + 100 / zoomed["scale"], abs=0.5)
        assert dragged["cy"] == pytest.approx(zoomed["cy"] + 50 / zoomed["scale"], abs=0.5)
        # the wheel zooms about the pointer: the image point under it stays under it
        px, py = 150, 120
        under = (dragged["cx"] + (px - view["width"] / 2) / dragged["scale"],
                 dragged["cy"] + (py - view["height"] / 2) / dragged["scale"])
        page.mouse.move(view["x"] + px, view["y"] + py)
        page.mouse.wheel(0, -100)
        wheeled = state()
        assert wheeled["zoom"] == pytest.approx(dragged["zoom"] * 1.25)
        assert (wheeled["cx"] + (px - view["width"] / 2) / wheeled["scale"],
                wheeled["cy"] + (py - view["height"] / 2) / wheeled["scale"]) == pytest.approx(under, abs=0.5)
        page.screenshot(path=str(shots / "zoomed.png"))
        page.keyboard.press("0")  # 1:1: one image pixel per screen pixel
        assert state()["scale"] == pytest.approx(1.0) and _views_aligned(page)
        page.keyboard.press("f")
        assert state()["zoom"] == 1 and _views_aligned(page)

        # ---- a small part is shown with its pixels (nearest neighbour), a reference part beside a reject
        page.goto(f"{base}/parts/{part['ok.png']}")
        assert page.locator("#view-original.pixelated").count() == 1
        page.keyboard.press("1")  # confirm ok: now the part most recently labelled good
        page.wait_for_selector(".saved")
        page.goto(f"{base}/parts/{part['crack.png']}")
        reference = page.locator("#reference")
        assert reference.is_hidden()
        page.keyboard.press("r")
        playwright.expect(reference).to_be_visible()
        assert f"/parts/{part['ok.png']}/picture?what=original" in reference.get_attribute("src")
        assert f"Reference: part #{part['ok.png']}, labelled ok" in page.inner_text("#reference-caption")
        page.wait_for_function("() => document.getElementById('reference').naturalWidth > 0")
        assert page.locator("#original").is_hidden()
        page.keyboard.press("r")
        playwright.expect(page.locator("#original")).to_be_visible()

        # ---- a verdict undone with u: a new row, the part unreviewed again
        page.keyboard.press("2")  # overrule crack -> ok; the next part opens
        page.wait_for_url(lambda url: f"/parts/{part['crack.png']}?" not in url)
        page.wait_for_selector(".saved")
        page.keyboard.press("u")
        page.wait_for_url(re.compile(rf"/parts/{part['crack.png']}\?"))
        assert "undone: your verdict (overrule -> ok)" in page.inner_text("p.saved")
        assert "it is now no verdict: to review" in page.inner_text("p.saved")
        assert "overrule (undone)" in page.inner_text("table.history")
        assert "not reviewed" in page.inner_text(".verdictline")

        # ---- a part sent by the line with its serial number, found again by a search for it
        import httpx

        image = (SAMPLES / "inclusion.png").read_bytes()
        sent = httpx.post(base + "/api/v1/explain", auth=("quality", PASSWORD), timeout=60,
                          files={"image": ("cam1.png", image, "image/png")},
                          data={"serial": "SN-2026-0042", "line": "L3", "camera": "top"})
        assert sent.status_code == 201, sent.text
        page.goto(f"{base}/queue")
        page.fill("#serial-search", "SN-2026-0042")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"serial=SN-2026-0042"))
        playwright.expect(page.locator("tr[data-id]")).to_have_count(1)
        assert "SN-2026-0042" in page.inner_text("#rows") and "L3 · top" in page.inner_text("#rows")
        page.locator("tr[data-id]").first.click()
        page.wait_for_url(re.compile(rf"/parts/{sent.json()['result_id']}"))
        assert "Serial SN-2026-0042 · line L3 · camera top" in page.inner_text(".identity")

        # ---- bulk confirm
        page.goto(f"{base}/bulk?cls=stain&min=0")
        assert page.locator(".thumbs img").count() == 1
        page.click("#bulk button[type=submit]")  # without the tick: the browser refuses (required)
        assert "confirmed" not in page.inner_text("main")
        page.check("input[name=looked]")
        page.click("#bulk button[type=submit]")
        page.wait_for_selector("p.saved")
        assert "confirmed 1 part(s) as stain" in page.inner_text("p.saved")

        # ---- the failed part: its own filter, reason, where the file is, acknowledge, explain again
        page.goto(f"{base}/queue?failed=1")
        playwright.expect(page.locator("tr[data-id]")).to_have_count(1)
        assert "failed: to acknowledge" in page.inner_text("#rows")
        page.locator("tr[data-id]").first.click()
        page.wait_for_url(re.compile(rf"/parts/{part['broken.png']}"))
        assert str(out / "failed" / "broken.png") in page.inner_text(".failure")
        page.fill("#comment", "camera restarted")
        page.keyboard.press("Enter")
        page.keyboard.press("1")
        page.wait_for_selector("p.saved")
        page.goto(f"{base}/parts/{part['broken.png']}")
        assert "acknowledged by quality" in page.inner_text(".failure")
        page.keyboard.press("2")
        page.wait_for_selector("p.saved")
        assert "failed again" in page.inner_text("p.saved")

        # ---- one screen at each window size; no text under 14 px
        reject = part["pits.png"]
        for width, height, scheme in ((1366, 768, "light"), (1024, 768, "light"), (1920, 1080, "dark")):
            sized = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme)
            sized.add_cookies(context.cookies())
            view_page = sized.new_page()
            view_page.goto(f"{base}/parts/{reject}")
            view_page.wait_for_load_state("load")
            for what in (".view", "#review", "svg.scores", "ol.regions", ".scale"):
                assert _in_view(view_page, what), (width, height, what)
            smallest, where = view_page.evaluate(VISIBLE_TEXT_MIN)
            assert smallest >= 14, (width, height, smallest, where)
            dark = view_page.evaluate("() => getComputedStyle(document.body).backgroundColor")
            assert (dark == "rgb(20, 24, 29)") == (scheme == "dark"), dark
            view_page.screenshot(path=str(shots / f"part-{width}x{height}.png"))
            if width == 1366:
                view_page.goto(f"{base}/queue")
                view_page.wait_for_function("() => Array.from(document.querySelectorAll('td.thumb img'))"
                                            ".every(i => i.complete && i.naturalWidth > 0)")
                smallest, where = view_page.evaluate(VISIBLE_TEXT_MIN)
                assert smallest >= 14, ("queue", smallest, where)
                view_page.screenshot(path=str(shots / "queue.png"))
            sized.close()
        # the theme button overrides the system's choice, and the choice is kept
        page.goto(f"{base}/queue")
        page.keyboard.press("t")
        assert page.evaluate("() => document.documentElement.dataset.theme") == "dark"
        page.reload()
        assert page.evaluate("() => getComputedStyle(document.body).backgroundColor") == "rgb(20, 24, 29)"
        browser.close()

    db = sqlite3.connect(db_path)
    rows = db.execute("SELECT result_id, verdict, label, reviewer, undoes FROM reviews "
                      "ORDER BY id").fetchall()
    db.close()
    crack_verdict = next(r for r in rows if r[0] == part["crack.png"] and r[1] == "overrule")
    assert [r[1:] for r in rows] == [
        ("confirm", "ok", "quality", None),
        ("overrule", "ok", "quality", None),
        ("undo", None, "quality", rows.index(crack_verdict) + 1),
        ("confirm", "stain", "quality", None),
        ("acknowledge", None, "quality", None),
        ("explain_again", None, "quality", None),
    ]
