"""What recording in the results store costs, next to the explanation itself (bundled example model, CPU).

For the same synthetic images, in one process and interleaved image by image (machines are shared and
noisy), it times:
  engine     decode + Inspector.explain + regions (what any caller pays)
  rendered   the above plus the artifacts' bytes (npz compression, two PNG encodings, JSON), not written
  recorded   inspector.jobs.record.explain_and_record: the above plus hashing, claim, artifacts (npz, two
             PNGs, JSON, written and fsynced), and the result in the store
  resume     explain_and_record on an image the store already has (what a resumed audit pays per image)
and prints medians per image and the ratio recorded / engine. ``--postgres URL`` (a server URL without
database, e.g. postgresql+psycopg://postgres@127.0.0.1:5432) adds the same on PostgreSQL. SQLite runs
with ``synchronous=FULL`` as the store sets it; a PostgreSQL server's own durability settings apply.

    python benchmarks/store_overhead.py [--images 40] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import cv2

from inspector.demo import example_dir
from inspector.engine.inspector import Inspector
from inspector.engine.review import review
from inspector.engine.runtime import preprocess as pre
from inspector.jobs.artifacts import render
from inspector.jobs.record import explain_and_record, start_job
from inspector.quality.synthetic import sample
from inspector.store import Store, default_url


def make_images(folder: str, count: int) -> list[str]:
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"part_{i:03d}.png")
        cv2.imwrite(path, cv2.cvtColor(sample(2024, i).image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def engine_only(insp: Inspector, path: str) -> None:
    image = pre.read_image(path, max_pixels=insp.config.preprocess.max_pixels)
    review(insp.explain(image), insp.config, insp.roi)


def engine_and_render(insp: Inspector, path: str) -> None:
    image = pre.read_image(path, max_pixels=insp.config.preprocess.max_pixels)
    exp = insp.explain(image)
    rv = review(exp, insp.config, insp.roi)
    render(exp, image, insp.config, review=rv, roi=insp.roi)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def new_pg_database(server: str) -> str:
    import uuid

    import psycopg

    name = "sise_bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(server.replace("postgresql+psycopg://", "postgresql://") + "/postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--postgres", default=None, help="server URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    insp = Inspector.from_config(os.path.join(example_dir(), "config.yaml"))
    insp.warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "in"))
        paths = make_images(os.path.join(tmp, "in"), args.images)
        stores = {"sqlite": (default_url(os.path.join(tmp, "sqlite")), os.path.join(tmp, "sqlite"))}
        if args.postgres:
            stores["postgresql"] = (new_pg_database(args.postgres), os.path.join(tmp, "pg"))
        jobs = {}
        for name, (url, out) in stores.items():
            os.makedirs(out, exist_ok=True)
            store = Store(url)
            jobs[name] = start_job(insp, store, kind="audit", out_dir=out)
        times: dict[str, list[float]] = {"engine": [], "rendered": []}
        times.update({f"{step} ({n})": [] for step in ("recorded", "resume") for n in jobs})
        for path in paths:  # interleaved, image by image
            times["engine"].append(timed(engine_only, insp, path))
            times["rendered"].append(timed(engine_and_render, insp, path))
            for name, job in jobs.items():
                times[f"recorded ({name})"].append(timed(explain_and_record, job, path))
        for path in paths:
            for name, job in jobs.items():
                times[f"resume ({name})"].append(timed(explain_and_record, job, path))
        for job in jobs.values():
            job.store.close()
    engine = statistics.median(times["engine"])
    print(f"{args.images} images, bundled example model, {insp.sessions.provider}; medians per image")
    for label, values in times.items():
        median = statistics.median(values)
        ratio = f"  ({median / engine:.3f} x engine)" if label.startswith(("recorded", "rendered")) else ""
        print(f"  {label:<24} {median * 1000:8.2f} ms{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
