"""The `inspector` commands (explain, evaluate, audit, audit-merge, doctor, watch, demo): thin shells over
the modules that do the work; errors become one `error: ...` line and exit status 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .engine import Inspector
from .errors import InspectorError
from .jobs import explain_file
from .preprocess import IMAGE_EXTENSIONS


def collect_images(items: list[str]) -> list[str]:
    """Files as given, and the image files of given folders (sorted)."""
    out = []
    for item in items:
        if os.path.isdir(item):
            out.extend(sorted(os.path.join(item, f) for f in os.listdir(item)
                              if f.lower().endswith(IMAGE_EXTENSIONS)))
        else:
            out.append(item)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inspector", description="SISE explanations on ONNX Runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explain", help="explain images and write npz, overlay png and json per image")
    ex.add_argument("-c", "--config", required=True, help="YAML config")
    ex.add_argument("images", nargs="+", help="image files or folders")
    ex.add_argument("--out", required=True, help="output folder (created if missing)")
    ex.add_argument("--target", default=None, help="class name or index to explain (default: the top class)")
    ev = sub.add_parser("evaluate", help="explanation quality against ground-truth defect masks")
    ev.add_argument("-c", "--config", required=True)
    ev.add_argument("--data", required=True, help="folder with manifest.csv (python -m inspector.synthetic)")
    ev.add_argument("--methods", default="sise,gradcam,rise", help="comma-separated method names")
    ev.add_argument("--out", default="sise-evaluation", help="output folder (default ./sise-evaluation)")
    ev.add_argument("--limit", type=int, default=None, help="evaluate only the first N defect images")
    au = sub.add_parser("audit", help="resumable, shardable batch run with results.csv/jsonl and report.html")
    au.add_argument("-c", "--config", required=True)
    au.add_argument("input", help="folder of images or a manifest .csv with an 'image' column")
    au.add_argument("--out", required=True)
    au.add_argument("--shard", default=None, help="I/N: this machine's share of the input, e.g. 0/4")
    merge = sub.add_parser("audit-merge", help="join the outputs of sharded audits")
    merge.add_argument("parts", nargs="+", help="audit output folders")
    merge.add_argument("--out", required=True)
    doc = sub.add_parser("doctor", help="check onnxruntime, providers, CUDA libraries, the model and a self-test")
    doc.add_argument("-c", "--config", default=None, help="config to check (default: the bundled example)")
    wa = sub.add_parser("watch", help="service: explain each new image in a folder once")
    wa.add_argument("-c", "--config", required=True)
    wa.add_argument("--in", dest="in_dir", required=True, help="folder to watch")
    wa.add_argument("--out", required=True, help="folder for the explanations")
    wa.add_argument("--done", default=None, help="where handled images go (default: <in>/done)")
    wa.add_argument("--failed", default=None, help="where failed images go (default: <in>/failed)")
    wa.add_argument("--poll", type=float, default=1.0, help="seconds between folder scans")
    wa.add_argument("--settle", type=float, default=2.0, help="seconds a file must stay unchanged before use")
    demo = sub.add_parser("demo", help="explain the bundled defect samples with the bundled example model")
    demo.add_argument("--out", default="sise-demo", help="output folder (default ./sise-demo)")
    return parser


def cmd_demo(args) -> int:
    from .demo import run_demo

    index, seconds = run_demo(args.out)
    print(f"done in {seconds:.1f} s; open {os.path.abspath(index)} (overlays, per-layer maps and JSON "
          f"sidecars are beside it)")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import markdown, run_evaluation

    insp = Inspector.from_config(args.config)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    start = time.perf_counter()

    def progress(done, total):
        elapsed = time.perf_counter() - start
        print(f"\r[{done}/{total}] {elapsed:.0f} s, eta {elapsed / done * (total - done):.0f} s", end="",
              file=sys.stderr, flush=True)
    table = run_evaluation(insp, args.data, methods, args.out, limit=args.limit, progress=progress)
    print(file=sys.stderr)
    print(markdown(table))
    print(f"wrote {os.path.join(args.out, 'summary.md')}, summary.csv and per_image.csv")
    return 0


def cmd_audit(args) -> int:
    from .audit import parse_shard, run_audit

    shard = parse_shard(args.shard)
    rows = run_audit(Inspector.from_config(args.config), args.input, args.out, shard=shard)
    failed = sum(1 for r in rows if r["error"])
    print(f"{len(rows)} image(s) in {args.out}/results.csv ({failed} failed); report: {args.out}/report.html")
    return 0


def cmd_audit_merge(args) -> int:
    from .audit import merge_audits

    rows = merge_audits(args.parts, args.out)
    print(f"merged {len(rows)} image(s) into {args.out}/results.csv; report: {args.out}/report.html")
    return 0


def cmd_doctor(args) -> int:
    from .doctor import run_doctor

    return run_doctor(args.config)


def cmd_watch(args) -> int:
    from .watch import Stop, watch

    stop = Stop()
    stop.install()
    insp = Inspector.from_config(args.config)

    def log(line: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}", flush=True)
    watch(insp, args.in_dir, args.out, args.done or os.path.join(args.in_dir, "done"),
          args.failed or os.path.join(args.in_dir, "failed"), poll=args.poll, settle=args.settle, stop=stop, log=log)
    return 0


def cmd_explain(args) -> int:
    insp = Inspector.from_config(args.config)
    os.makedirs(args.out, exist_ok=True)
    images = collect_images(args.images)
    if not images:
        print("error: no images found in " + ", ".join(args.images), file=sys.stderr)
        return 2
    failures = []
    start = time.perf_counter()
    for i, path in enumerate(images, 1):
        t0 = time.perf_counter()
        try:
            exp, _ = explain_file(insp, path, args.out, target=args.target)
            status = f"{time.perf_counter() - t0:.2f} s, {exp.total_masks} masks"
        except (InspectorError, OSError) as e:
            failures.append((path, str(e)))
            status = "FAILED"
        elapsed = time.perf_counter() - start
        eta = elapsed / i * (len(images) - i)
        print(f"[{i}/{len(images)}] {os.path.basename(path)}: {status} (elapsed {elapsed:.1f} s, eta {eta:.1f} s)",
              file=sys.stderr, flush=True)
    print(f"wrote {len(images) - len(failures)} explanation(s) to {args.out}")
    if failures:
        print(f"{len(failures)} image(s) failed:", file=sys.stderr)
        for path, message in failures:
            print(f"  {path}: {message}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return {"explain": cmd_explain, "demo": cmd_demo, "evaluate": cmd_evaluate, "audit": cmd_audit,
                "audit-merge": cmd_audit_merge, "doctor": cmd_doctor,
                "watch": cmd_watch}[args.command](args)
    except InspectorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
