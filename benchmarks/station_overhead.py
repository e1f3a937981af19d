"""What the review station adds to the engine's time per image (bundled example model, CPU).

For the same synthetic images, in one process and interleaved image by image (machines are shared and
noisy), it times:
  engine     decode + Inspector.explain + regions (what any caller pays)
  recorded   inspector.jobs.record.explain_and_record into SQLite (what `inspector explain`/`audit` pay:
             rendering, fsynced artifacts, the result in the store)
  station    POST /api/v1/explain over HTTP to a station served by uvicorn in this process (upload,
             multipart parsing, the upload kept on disk, then the same record path, and the JSON answer)
and prints medians per image and the ratios to the engine and to the record path. ``--no-npz`` runs all
three with ``outputs.npz: false`` (compressing the maps is most of the rendering time).

    python benchmarks/station_overhead.py [--images 40] [--no-npz]
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import statistics
import sys
import tempfile
import time

import httpx
from station_server import serving
from store_overhead import engine_only, make_images, timed

from inspector.demo import example_dir
from inspector.engine.inspector import Inspector
from inspector.jobs.record import explain_and_record, start_job
from inspector.station import auth
from inspector.station.service import Station, StationSettings
from inspector.store import Store, default_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--no-npz", action="store_true", help="outputs.npz: false")
    args = parser.parse_args()
    config = os.path.join(example_dir(), "config.yaml")
    insp = Inspector.from_config(config)
    if args.no_npz:
        outputs = dataclasses.replace(insp.config.outputs, npz=False)
        insp.config = dataclasses.replace(insp.config, outputs=outputs)
    insp.warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "in"))
        paths = make_images(os.path.join(tmp, "in"), args.images)
        out = os.path.join(tmp, "recorded")
        os.makedirs(out)
        job = start_job(insp, Store(default_url(out)), kind="audit", out_dir=out)
        station = Station(StationSettings(config=config, out_dir=os.path.join(tmp, "station")), insp=insp)
        auth.add_user(station.store, "bench", "bench-password", "reviewer")
        header = {"Authorization": "Basic " + base64.b64encode(b"bench:bench-password").decode()}
        times: dict[str, list[float]] = {"engine": [], "recorded": [], "station": []}
        with serving(station) as base, httpx.Client(base_url=base, headers=header, timeout=60) as client:
            def upload(path: str) -> None:
                with open(path, "rb") as f:
                    files = {"image": (os.path.basename(path), f.read())}
                response = client.post("/api/v1/explain", files=files)
                if response.status_code != 201:
                    raise SystemExit(f"station answered {response.status_code}: {response.text}")

            for path in paths:  # interleaved, image by image
                times["engine"].append(timed(engine_only, insp, path))
                times["recorded"].append(timed(explain_and_record, job, path))
                start = time.perf_counter()
                upload(path)
                times["station"].append(time.perf_counter() - start)
        job.store.close()
    engine, recorded = statistics.median(times["engine"]), statistics.median(times["recorded"])
    print(f"{args.images} images, bundled example model, {insp.sessions.provider}, "
          f"npz {'off' if args.no_npz else 'on'}; medians per image")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"  {label:<10} {median * 1000:8.2f} ms  ({median / engine:.3f} x engine, "
              f"{median / recorded:.3f} x recorded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
