"""How fast the review station's pages answer with many parts in the store (bundled example config).

Fills a new SQLite store with ``--parts`` explained parts (rows written through the store's API, spread
over the last eight hours, a third of them reviewed; no explaining, which would take minutes), serves the
station with uvicorn in this process, logs in, and times each page over HTTP (median and 95th percentile
of ``--repeats`` requests). With Chromium at /usr/bin/chromium it also times a full page load in the
browser (navigation start to the load event, stylesheet and script included).

    python benchmarks/station_pages.py [--parts 1000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta

import httpx
from station_server import serving

from inspector.demo import example_dir
from inspector.station import auth
from inspector.station.service import Station, StationSettings
from inspector.store import ResultKey
from inspector.store.db import utcnow
from inspector.store.schema import results

PAGES = ("/queue", "/queue?unreviewed=1", "/queue?cls=crack", "/queue/rows", "/parts/{mid}", "/shift",
         "/api/v1/results?limit=100")


def fill(station: Station, parts: int) -> None:
    store, classes = station.store, station.classes
    run = station.job.run_id
    now = utcnow()
    for i in range(parts):
        sha = hashlib.sha256(f"part {i}".encode()).hexdigest()
        store.add_image(sha, 1000, f"/line3/part_{i:05d}.png")
        claim = store.claim(ResultKey(sha, station.job.settings_hash, "top"), run, f"/line3/part_{i:05d}.png")
        k = i % len(classes)
        scores = [0.02] * len(classes)
        scores[k] = 0.9
        store.finish(claim, run, {"status": "done", "prediction": k, "prediction_name": classes[k],
                                  "confidence": 0.9, "scores": scores, "region_count": 1, "regions": [],
                                  "evidence_mean": 0.1, "flagged": False, "seconds": 0.1, "masks": 138},
                     scope=station.job.scope, path=f"/line3/part_{i:05d}.png", image_sha256=sha)
        with store.begin() as conn:  # spread over the shift
            conn.execute(results.update().where(results.c.id == claim.result_id)
                         .values(finished_at=now - timedelta(seconds=8 * 3600 * (parts - i) / parts)))
        if i % 3 == 0:
            store.add_review(claim.result_id, verdict="confirm", label=classes[k], reviewer="bench")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    config = os.path.join(example_dir(), "config.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        station = Station(StationSettings(config=config, out_dir=os.path.join(tmp, "station")))
        auth.add_user(station.store, "bench", "bench-password", "admin")
        start = time.perf_counter()
        fill(station, args.parts)
        print(f"{args.parts} parts in the store (filled in {time.perf_counter() - start:.1f} s); "
              f"times per request, {args.repeats} requests each")
        with serving(station) as base, httpx.Client(base_url=base, timeout=60) as client:
            token = client.get("/login").cookies["sise_login"]
            client.post("/login", data={"username": "bench", "password": "bench-password", "token": token})
            mid = args.parts // 2
            for page in PAGES:
                url = page.format(mid=mid)
                times = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    response = client.get(url)
                    times.append(time.perf_counter() - t)
                    if response.status_code != 200:
                        raise SystemExit(f"{url}: {response.status_code}")
                times.sort()
                p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
                median = statistics.median(times)
                print(f"  {url:<28} median {median * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms  "
                      f"({len(response.content) // 1024} KiB)")
            browser_load(base, client.cookies.get("sise_session"), args.repeats)
    return 0


def browser_load(base: str, session: str, repeats: int) -> None:
    if not os.path.exists("/usr/bin/chromium"):
        print("  (no /usr/bin/chromium: browser load times skipped)")
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context()
        context.add_cookies([{"name": "sise_session", "value": session, "url": base}])
        page = context.new_page()
        for url in ("/queue", "/shift"):
            times = []
            for _ in range(repeats):
                page.goto(base + url, wait_until="load")
                load = page.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd")
                times.append(load)
            print(f"  browser load {url:<15} median {statistics.median(times):7.1f} ms (navigation start to "
                  "load event, Chromium)")
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
