"""What a shift at the review station costs with a 12 MP camera: the part page's bytes and time, the
station's memory after many such parts, and bulk confirm of 100 parts (bundled example config, CPU).

1. One 4000x3000 image is explained by the station (the engine draws its 12 MP overlay and thumbnail);
   ``--big`` parts (default 200) are then recorded with their own 12 MP originals (JPEG, each a different
   picture: noise of its own is added) whose rows point at those overlay and thumbnail files, so that
   every part page makes its previews from 12 MP files. Each part page is fetched over HTTP as Chromium
   would at first sight: the HTML, the two previews it shows, the colour bar. It prints bytes and time
   per part page, what zooming in to full resolution downloads, and the process's resident memory before
   and after.
   The queue's first page is fetched with its thumbnails before any part page.
2. ``--rounds`` rounds (default 3) of bulk confirm: 100 new unreviewed parts predicted one class with a
   confidence of 0.99, listed by GET /bulk, confirmed by one POST /bulk/confirm; the store is checked for
   100 verdict rows each round.

    python benchmarks/station_review.py [--big 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import sys
import tempfile
import time

import cv2
import httpx
import numpy as np
import sqlalchemy as sa
from station_server import serving

from inspector.demo import example_dir
from inspector.station import auth
from inspector.station.service import Station, StationSettings
from inspector.store import ResultKey
from inspector.store.schema import artifacts, reviews

SIZE = (4000, 3000)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def big_parts(station: Station, folder: str, count: int) -> list[int]:
    """One explained 12 MP part, and ``count - 1`` more rows with their own 12 MP originals and its
    overlay."""
    sample = cv2.imread(os.path.join(example_dir(), "samples", "scratch.png"), cv2.IMREAD_COLOR)
    base = cv2.resize(sample, SIZE, interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    first = cv2.imencode(".jpg", base, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    outcome = station.explain_upload(first, "part_00000.jpg")
    row = station.store.result(outcome.result_id)
    with station.store.begin() as conn:  # the other parts' rows name the same overlay and thumbnail files
        drawn = (
            conn.execute(
                sa.select(artifacts).where(
                    artifacts.c.result_id == outcome.result_id, artifacts.c.kind.in_(["overlay", "thumb"])
                )
            )
            .mappings()
            .all()
        )
    ids = [outcome.result_id]
    run, store = station.job.run_id, station.store
    for i in range(1, count):
        noisy = np.clip(base.astype(np.int16) + rng.integers(-6, 7, base.shape, dtype=np.int16), 0, 255)
        data = cv2.imencode(".jpg", noisy.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
        path = os.path.join(folder, f"part_{i:05d}.jpg")
        with open(path, "wb") as f:
            f.write(data)
        sha = hashlib.sha256(data).hexdigest()
        store.add_image(sha, len(data), path)
        claim = store.claim(ResultKey(sha, station.job.settings_hash, "top"), run, path)
        fields = {
            k: row[k]
            for k in (
                "status",
                "prediction",
                "prediction_name",
                "confidence",
                "scores",
                "region_count",
                "regions",
                "evidence_mean",
                "flagged",
                "seconds",
                "masks",
            )
        }
        store.finish(
            claim,
            run,
            fields,
            [{k: a[k] for k in ("kind", "path", "sha256", "size")} for a in drawn],
            scope=station.job.scope,
            path=path,
            image_sha256=sha,
        )
        ids.append(claim.result_id)
    return ids


def part_pages(client: httpx.Client, ids: list[int]) -> None:
    sizes, times = [], []
    for rid in ids:
        start = time.perf_counter()
        html = client.get(f"/parts/{rid}")
        fetched = len(html.content)
        for url in re.findall(
            r'<img (?:id="original" |class="under" |id="overlay" class="over" )src="([^"]+)"', html.text
        )[:2] + ["/colourbar.png"]:
            response = client.get(url.replace("&amp;", "&"))
            if response.status_code != 200:
                raise SystemExit(f"{url}: {response.status_code}")
            fetched += len(response.content)
        times.append(time.perf_counter() - start)
        sizes.append(fetched)
    times.sort()
    print(
        f"  part page at first sight (HTML, original and overlay previews, colour bar), {len(ids)} parts: "
        f"median {statistics.median(sizes) / 1024:.0f} KiB, {statistics.median(times) * 1000:.0f} ms "
        f"(p95 {times[int(0.95 * (len(times) - 1))] * 1000:.0f} ms)"
    )
    start = time.perf_counter()
    full = sum(
        len(client.get(f"/parts/{ids[-1]}/picture", params={"what": w, "size": "full"}).content)
        for w in ("original", "overlay")
    )
    print(
        f"  zoomed in to full resolution: {full / 2**20:.1f} MiB more "
        f"({(time.perf_counter() - start) * 1000:.0f} ms); the part's files: original "
        f"{len(client.get(f'/parts/{ids[-1]}/original').content) / 2**20:.1f} MiB, overlay "
        f"{len(client.get(f'/artifacts/{ids[-1]}/overlay').content) / 2**20:.1f} MiB"
    )


def queue_thumbnails(client: httpx.Client) -> None:
    """The queue's first page at first sight: its rows, then every thumbnail (none served before)."""
    start = time.perf_counter()
    rows = client.get("/queue/rows", params={"order": "newest"}).text
    urls = [u.replace("&amp;", "&") for u in re.findall(r'<td class="thumb"><img src="([^"]+)"', rows)]
    fetched = sum(len(client.get(u).content) for u in urls)
    seconds = time.perf_counter() - start
    print(f"  queue page with {len(urls)} thumbnails at first sight: {seconds:.1f} s "
          f"({seconds / max(1, len(urls)) * 1000:.0f} ms per thumbnail, {fetched / 1024:.0f} KiB; "
          "each written with its result)")


def bulk_rounds(station: Station, client: httpx.Client, rounds: int, taken: str) -> None:
    """``taken``: the 12 MP parts' class, which the bulk parts avoid (their list holds only its own)."""
    store, run = station.store, station.job.run_id
    k, cls = next((k, c) for k, c in enumerate(station.classes) if c != taken)
    listed, confirmed = [], []
    for r in range(rounds):
        made = []
        for i in range(100):
            sha = hashlib.sha256(f"bulk {r} {i}".encode()).hexdigest()
            path = f"/line3/bulk_{r}_{i:03d}.png"
            store.add_image(sha, 1000, path)
            claim = store.claim(ResultKey(sha, station.job.settings_hash, "top"), run, path)
            store.finish(
                claim,
                run,
                {
                    "status": "done",
                    "prediction": k,
                    "prediction_name": cls,
                    "confidence": 0.99,
                    "region_count": 1,
                    "regions": [],
                    "flagged": False,
                },
                scope=station.job.scope,
                path=path,
                image_sha256=sha,
            )
            made.append(claim.result_id)
        start = time.perf_counter()
        page = client.get("/bulk", params={"cls": cls, "min": 0.98})
        listed.append(time.perf_counter() - start)
        ids = re.search(r'name="ids" value="([0-9,]+)"', page.text).group(1)
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text).group(1)
        start = time.perf_counter()
        done = client.post(
            "/bulk/confirm",
            data={"cls": cls, "min": 0.98, "ids": ids, "looked": "1", "csrf_token": csrf},
            follow_redirects=True,
        )
        confirmed.append(time.perf_counter() - start)
        with store.begin() as conn:
            rows = conn.execute(
                sa.select(sa.func.count()).select_from(reviews).where(reviews.c.result_id.in_(made))
            ).scalar_one()
        if rows != 100 or "confirmed 100 part(s)" not in done.text:
            raise SystemExit(f"round {r}: {rows} verdict rows for 100 parts")
    print(
        f"  bulk confirm of 100 parts, {rounds} rounds: list (GET /bulk) median "
        f"{statistics.median(listed) * 1000:.0f} ms, confirm (POST) median "
        f"{statistics.median(confirmed) * 1000:.0f} ms "
        f"({statistics.median(confirmed) * 10:.1f} ms per part), 100 verdict rows each round"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=200, help="12 MP parts (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="bulk confirm rounds (default 3)")
    args = parser.parse_args()
    config = os.path.join(example_dir(), "config.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        station = Station(StationSettings(config=config, out_dir=os.path.join(tmp, "station")))
        auth.add_user(station.store, "bench", "bench-password", "admin")
        start = time.perf_counter()
        ids = big_parts(station, tmp, args.big)
        print(
            f"{len(ids)} parts of {SIZE[0]}x{SIZE[1]} px in the store "
            f"(made in {time.perf_counter() - start:.0f} s)"
        )
        with serving(station) as base, httpx.Client(base_url=base, timeout=120) as client:
            token = client.get("/login").cookies["sise_login"]
            client.post("/login", data={"username": "bench", "password": "bench-password", "token": token})
            before = rss_mib()
            queue_thumbnails(client)
            part_pages(client, ids)
            print(
                f"  station process memory (RSS): {before:.0f} MiB before the part pages, "
                f"{rss_mib():.0f} MiB "
                f"after {len(ids)} (pictures cache bounded at 48 MiB)"
            )
            bulk_rounds(station, client, args.rounds, station.store.result(ids[0])["prediction_name"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
