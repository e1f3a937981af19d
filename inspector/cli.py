"""The `inspector` commands (explain, evaluate, audit, audit-merge, report, doctor, watch, demo): thin shells
over the modules that do the work.

Exit codes, the same for every command:
    0  everything asked for was done
    1  done, but some images failed (each is listed and recorded)
    2  usage, config, model or store error: one line ``error: ...`` saying what to fix (--debug: traceback)
    3  incomplete: interrupted (SIGTERM/SIGINT) or stopped by an output error (disk full, permissions),
       or a merge that lacks shards or images; running the same command again continues
  141  the reader of standard output went away (`inspector schema | head`); nothing is printed
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import traceback
from typing import NoReturn

from .common.arguments import number, whole
from .common.folders import check_output_folder
from .common.progress import Progress
from .common.stop import Stop
from .common.version import __version__
from .engine.inspector import Inspector
from .engine.runtime.preprocess import IMAGE_EXTENSIONS
from .errors import InspectorError, Interrupted, OutputError

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_INCOMPLETE = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 128 + 13  # as a shell reports a tool ended by SIGPIPE


def collect_images(items: list[str]) -> list[str]:
    """Absolute paths: files as given, and the image files of given folders (sorted)."""
    out = []
    for item in map(os.path.abspath, items):
        if os.path.isdir(item):
            out.extend(sorted((os.path.join(item, f) for f in os.listdir(item)
                               if f.lower().endswith(IMAGE_EXTENSIONS)
                               and os.path.isfile(os.path.join(item, f))), key=os.fsencode))
        elif os.path.exists(item):
            out.append(item)
        else:
            raise InspectorError(f"{item}: no such file or folder")
    return out


_at_least_one = whole(1, 100_000)
MAX_ID = 2**31 - 1  # the store's integer columns (PostgreSQL's integer)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line with exit status 2, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    batch_option = {"type": _at_least_one, "default": None, "metavar": "N",
                    "help": "images explained together (default 8, at most method.chunk_size; 1: one at a "
                            "time); results are the same"}
    parser = _Parser(prog="inspector", description="SISE explanations on ONNX Runtime",
                                     epilog="exit codes: 0 done, 1 some images failed, "
                                            "2 usage/config/model/store error, "
                                            "3 incomplete (interrupted or output error; run again)")
    parser.add_argument("--version", action="version", version=f"sise-inspector {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    store_help = ("results store URL (default: sqlite <out>/results.db); e.g. "
                  "postgresql+psycopg://USER@HOST:5432/DB for a store several machines share")
    ex = sub.add_parser("explain", help="explain images and write npz, overlay png and json per image")
    ex.add_argument("-c", "--config", required=True, help="YAML config")
    ex.add_argument("images", nargs="+", help="image files or folders")
    ex.add_argument("--out", required=True, help="output folder (created if missing)")
    ex.add_argument("--target", default=None, help="class name or index to explain (default: the top class)")
    ex.add_argument("--store", default=None, help=store_help)
    ex.add_argument("--batch-images", **batch_option)
    ex.add_argument("--serial", default=None, help="the part's serial number (one image only)")
    for name in ("line", "camera", "product"):
        ex.add_argument(f"--{name}", default=None, help=f"the part's {name} (the same for every image)")
    ex.add_argument("--tag", action="append", default=[], help="a tag on the part (repeat for more)")
    ev = sub.add_parser("evaluate", help="explanation quality against ground-truth defect masks")
    ev.add_argument("-c", "--config", required=True)
    ev.add_argument("--data", required=True,
                    help="folder with manifest.csv (python -m inspector.synthetic), or for a detector with "
                         "truth.json (python -m inspector.synthetic --scenes)")
    ev.add_argument("--methods", default=None,
                    help="comma-separated method names (default sise,gradcam,rise; for a detector "
                         "sise,drise,gradcam)")
    ev.add_argument("--out", default="sise-evaluation", help="output folder (default ./sise-evaluation)")
    ev.add_argument("--limit", type=whole(1, MAX_ID), default=None,
                    help="evaluate only the first N defect images (a detector's: scenes)")
    au = sub.add_parser("audit", help="resumable, shardable batch run with results.csv/jsonl and report.html")
    au.add_argument("-c", "--config", required=True)
    au.add_argument("input", help="folder of images or a manifest .csv with an 'image' column")
    au.add_argument("--out", required=True)
    au.add_argument("--shard", default=None, help="I/N: this machine's share of the input, e.g. 0/4")
    au.add_argument("--store", default=None, help=store_help)
    au.add_argument("--no-retry", action="store_true", help="skip images whose earlier result failed")
    au.add_argument("--batch-images", **batch_option)
    au.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="local: this process; ray: a pool of Ray Data workers (the [ray] extra: pip "
                         "install -e '.[ray]' in the checkout), on this machine or the cluster at "
                         "--ray-address")
    au.add_argument("--ray-address", default=None,
                    help="a running Ray cluster (e.g. ray://head:10001 or auto); default: a local Ray")
    au.add_argument("--workers", type=whole(1, 4096), default=None,
                    help="Ray workers, one Inspector each (default 2)")
    au.add_argument("--gpus-per-worker", type=number(0, 1024), default=0.0,
                    help="GPUs each Ray worker reserves (e.g. 1, or 0.5 for two per GPU; default 0)")
    merge = sub.add_parser("audit-merge", help="join the stores of sharded audits into a new one")
    merge.add_argument("parts", nargs="+", help="audit output folders (or store URLs); never modified")
    merge.add_argument("--out", required=True, help="a new folder for the merged store, views and images")
    merge.add_argument("--store", default=None,
                       help="write the merge into this store instead of <out>/results.db")
    rep = sub.add_parser("report", help="write results.csv, results.jsonl and report.html from a store")
    rep.add_argument("--store", required=True, help="store URL, or a folder holding results.db")
    rep.add_argument("--out", required=True, help="folder for the three files")
    rep.add_argument("--run", type=whole(1, MAX_ID), default=None,
                     help="only the inputs of this run's audit (default: all)")
    sub.add_parser("schema", help="print the config's JSON Schema (configs/inspector-config.schema.json)")
    doc = sub.add_parser("doctor",
                         help="check onnxruntime, providers, CUDA libraries, the model and a self-test")
    doc.add_argument("-c", "--config", default=None, help="config to check (default: the bundled example)")
    wa = sub.add_parser("watch", help="service: explain each new image in a folder once")
    wa.add_argument("-c", "--config", required=True)
    wa.add_argument("--in", dest="in_dir", required=True, help="folder to watch")
    wa.add_argument("--out", required=True, help="folder for the explanations")
    wa.add_argument("--done", default=None, help="where handled images go (default: <out>/done)")
    wa.add_argument("--failed", default=None, help="where failed images go (default: <out>/failed)")
    wa.add_argument("--store", default=None, help=store_help)
    wa.add_argument("--batch-images", **batch_option)
    wa.add_argument("--poll", type=number(0, 3600, above_low=True), default=1.0,
                    help="seconds between folder scans (default 1)")
    wa.add_argument("--settle", type=number(0, 86400), default=2.0,
                    help="seconds a file must stay unchanged before use (default 2)")
    from .station.cli import add_parser as add_station_parser
    add_station_parser(sub, store_help)
    demo = sub.add_parser("demo", help="explain the bundled defect samples with the bundled example model")
    demo.add_argument("--out", default="sise-demo", help="output folder (default ./sise-demo)")
    return parser


def cmd_demo(args) -> int:
    from .demo import run_demo

    index, seconds = run_demo(args.out)
    print(f"done in {seconds:.1f} s; open {os.path.abspath(index)} (overlays, per-layer maps and JSON "
          f"sidecars are in {os.path.join(os.path.abspath(args.out), 'images')}, results in results.db)")
    return 0


def cmd_evaluate(args) -> int:
    insp = Inspector.from_config(args.config)
    if insp.detector:
        from .quality.evaluate_detections import markdown
        from .quality.evaluate_detections import run_detector_evaluation as run_evaluation
        default, per = "sise,drise,gradcam", "per_detection.csv"
    else:
        from .quality.evaluate import markdown, run_evaluation
        default, per = "sise,gradcam,rise", "per_image.csv"
    methods = [m.strip() for m in (args.methods or default).split(",") if m.strip()]
    progress: list[Progress] = []

    def report(done, total):
        if not progress:
            progress.append(Progress(total))
        progress[0].update(done)
    table = run_evaluation(insp, args.data, methods, args.out, limit=args.limit, progress=report)
    if progress:
        progress[0].finish("evaluated")
    print(markdown(table))
    print(f"wrote {os.path.join(args.out, 'summary.md')}, summary.csv and {per}")
    return 0


def cmd_audit(args) -> int:
    from .jobs.audit import parse_shard, run_audit

    stop = Stop().install()  # before the model loads: a SIGTERM during start-up still ends in views, exit 3
    shard = parse_shard(args.shard)
    if args.engine == "ray":
        from .jobs.ray_audit import DEFAULT_WORKERS, RayOptions, run_ray_audit

        options = RayOptions(address=args.ray_address,
                             workers=DEFAULT_WORKERS if args.workers is None else args.workers,
                             gpus_per_worker=args.gpus_per_worker)
        s = run_ray_audit(args.config, args.input, args.out, options=options, store_url=args.store,
                          shard=shard, retry=not args.no_retry, stop=stop, batch_images=args.batch_images)
    else:
        if args.ray_address is not None or args.workers is not None or args.gpus_per_worker:
            raise InspectorError("--ray-address, --workers and --gpus-per-worker need --engine ray")
        insp = Inspector.from_config(args.config)
        s = run_audit(insp, args.input, args.out, store_url=args.store, shard=shard, retry=not args.no_retry,
                      stop=stop, batch_images=args.batch_images)
    if s.rows or not s.stopped:
        print(f"{s.total} image(s): {s.explained} explained now, {s.reused} found in the store, "
              f"{s.failed} failed, {s.pending} not finished; views: {os.path.join(args.out, 'results.csv')}, "
              "results.jsonl, report.html")
    else:
        print(f"{s.total} image(s): {s.explained} explained now, {s.reused} found in the store; "
              "the views could not be written")
    _list_failures(s.rows)
    if s.stopped:
        print(f"error: {s.stopped}", file=sys.stderr)
    return s.exit_code


def _list_failures(rows: list[dict]) -> None:
    from .jobs.views import failure_line

    _print_failures([failure_line(r) for r in rows if r["status"] == "failed"], limit=20)


def _print_failures(messages: list[str], limit: int | None = None) -> None:
    """``N image(s) failed:`` and one line each (at most ``limit``; the views list them all)."""
    if messages:
        print(f"{len(messages)} image(s) failed:", file=sys.stderr)
    for message in messages[:limit]:
        print(f"  {message}", file=sys.stderr)
    if limit is not None and len(messages) > limit:
        print(f"  and {len(messages) - limit} more (results.csv lists them all)", file=sys.stderr)


def cmd_audit_merge(args) -> int:
    from .jobs.merge import merge_audits

    s = merge_audits(args.parts, args.out, store_url=args.store, stop=Stop().install())
    print(f"merged {len(s.rows)} image(s) into {os.path.join(args.out, 'results.csv')}; report: "
          f"{os.path.join(args.out, 'report.html')}")
    _list_failures(s.rows)
    if s.missing_shards:
        print(f"error: incomplete: shard(s) {', '.join(f'{i}/{s.shard_count}' for i in s.missing_shards)} "
              "missing; merge them too", file=sys.stderr)
    if s.pending:
        print(f"error: incomplete: {len(s.pending)} image(s) of the merged shards have no result, e.g. "
              f"{s.pending[0]['path']}; finish those audits and merge again", file=sys.stderr)
    return s.exit_code


def cmd_report(args) -> int:
    from .jobs.views import write_views
    from .store import Store, default_url, display_url

    url = args.store if "://" in args.store else default_url(args.store)
    check_output_folder("--out", args.out)
    with Store(url, readonly=True) as store:
        run = store.run(args.run) if args.run is not None else None
        scopes = [run["scope"]] if run is not None and run["kind"] != "merge" else None  # merge: all it holds
        rows = write_views(store, args.out, scopes=scopes,
                           title=f"SISE results from {display_url(store.url)}")
    print(f"{len(rows)} image(s): {os.path.join(args.out, 'results.csv')}, results.jsonl, report.html")
    return EXIT_OK


def cmd_schema(args) -> int:
    import json

    from .config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_doctor(args) -> int:
    from .doctor import run_doctor

    return run_doctor(args.config)


def cmd_watch(args) -> int:
    from .jobs.watch import watch

    stop = Stop().install()
    insp = Inspector.from_config(args.config)

    def log(line: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}", flush=True)
    watch(insp, args.in_dir, args.out, args.done, args.failed, store_url=args.store, poll=args.poll,
          settle=args.settle, stop=stop, log=log, batch_images=args.batch_images)
    return EXIT_OK


def cmd_explain(args) -> int:
    from .common.identity import make_identity
    from .jobs.record import explain_and_record_many, start_job
    from .store import Store, default_url, display_path

    stop = Stop().install()
    insp = Inspector.from_config(args.config)
    if args.target is not None:
        insp.class_index(args.target)  # an unknown class is a usage error before anything is created
    check_output_folder("--out", args.out)
    images = collect_images(args.images)
    if not images:
        raise InspectorError("no images found in " + ", ".join(args.images))
    given = make_identity(args.serial, args.line, args.camera, args.product, args.tag)
    if args.serial is not None and len(images) > 1:
        raise InspectorError(f"--serial names one part, but {len(images)} images were given; explain them "
                             "one at a time, or name them by identity.pattern in the config")
    identities = None if given.empty else dict.fromkeys(images, given)
    os.makedirs(args.out, exist_ok=True)
    with Store(args.store or default_url(args.out)) as store:
        job = start_job(insp, store, kind="explain", out_dir=args.out, target=args.target)
        counts, failures = {"explained": 0, "reused": 0, "busy": 0}, []
        progress = Progress(len(images), every=1)  # a line per image in a log
        run_status = "finished"
        try:
            size, i = insp.batch_images(args.batch_images), 0
            with job.keep_alive():
                for first in range(0, len(images), size):
                    if stop.requested:
                        break
                    for outcome in explain_and_record_many(job, images[first:first + size], identities):
                        i += 1
                        progress.update(i, f"{display_path(outcome.path)}: "
                                           f"{_explain_status(outcome, counts, failures)}")
        except BaseException:
            run_status = "stopped"
            raise
        finally:
            progress.finish("handled")
            with contextlib.suppress(InspectorError):  # noted if the store can take it
                store.end_run(job.run_id, "stopped" if stop.requested else run_status)
    print(f"wrote {counts['explained']} explanation(s) to {os.path.join(args.out, 'images')}"
          + (f"; {counts['reused']} were already in the store" if counts["reused"] else ""))
    if counts["busy"]:
        print(f"error: {counts['busy']} image(s) are being explained by another process right now; run the "
              "same command again later to get their results", file=sys.stderr)
    _print_failures(failures)
    if stop.requested:
        print(f"error: interrupted by {stop.signal_name}; run the same command again to continue",
              file=sys.stderr)
    if stop.requested or counts["busy"]:
        return EXIT_INCOMPLETE
    return EXIT_FAILED if failures else EXIT_OK


def _explain_status(outcome, counts: dict, failures: list) -> str:
    from .store import display_path

    if outcome.failed:
        failures.append(outcome.error or f"{display_path(outcome.path)}: failed before "
                        "(same content and settings; the store has the error)")
        return "FAILED"
    if outcome.state == "explained":
        counts["explained"] += 1
        exp = outcome.explanation
        if isinstance(exp, list):  # a detector's image
            found = ", ".join(f"{d['class_name']} {d['score']:.2f}"
                              for d in outcome.fields["detections"]) or "none"
            return (f"{len(exp)} detection(s) ({found}), {sum(e.timings['total'] for e in exp):.2f} s, "
                    f"{sum(e.total_masks for e in exp)} masks")
        return f"{exp.timings['total']:.2f} s, {exp.total_masks} masks"
    if outcome.state == "done":
        counts["reused"] += 1
        return "already in the store"
    counts["busy"] += 1
    return "being explained by another process"


def cmd_station(args) -> int:
    from .station.cli import run

    return run(args)


COMMANDS = {"explain": cmd_explain, "demo": cmd_demo, "evaluate": cmd_evaluate, "audit": cmd_audit,
            "audit-merge": cmd_audit_merge, "report": cmd_report, "doctor": cmd_doctor, "watch": cmd_watch,
            "schema": cmd_schema, "station": cmd_station}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # file names that are not UTF-8 print as \xNN
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # the reader left (`inspector schema | head`): no message, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INCOMPLETE
    except Exception as e:  # noqa: BLE001 - every failure ends as one line; --debug shows where it came from
        if args.debug:
            traceback.print_exc()
        if isinstance(e, InspectorError):
            message = str(e)
        elif isinstance(e, OSError) and e.strerror:
            message = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        else:
            message = f"unexpected {type(e).__name__}: {e} (run with --debug for the traceback)"
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_INCOMPLETE if isinstance(e, (OutputError, Interrupted)) else EXIT_ERROR
