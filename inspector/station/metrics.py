"""``/metrics`` in the Prometheus text format: this process's counters and the store's figures."""

from __future__ import annotations

from . import queries
from .service import LATENCY_BUCKETS, Station


def prometheus_text(station: Station) -> str:
    m = station.metrics
    figures = queries.counts(station.store)
    with m.lock:
        explained, failed, in_flight = m.explained, m.failed, m.in_flight
        buckets, total, count = list(m.buckets), m.seconds_sum, m.seconds_count
    lines = [
        ("# HELP process_start_time_seconds When this station process started (Unix time): the *_total "
         "counters and the histogram count from then and start again at 0 with a new process, as "
         "Prometheus counters do (rate() and increase() handle it); the store's figures below do not."),
        "# TYPE process_start_time_seconds gauge",
        f"process_start_time_seconds {m.started:.3f}",
        "# HELP sise_parts_explained_total Parts this station process explained (uploads, watched folder).",
        "# TYPE sise_parts_explained_total counter",
        f"sise_parts_explained_total {explained}",
        "# HELP sise_explain_failures_total Images this station process could not explain.",
        "# TYPE sise_explain_failures_total counter",
        f"sise_explain_failures_total {failed}",
        "# HELP sise_explain_seconds Time from an image's bytes to its recorded result.",
        "# TYPE sise_explain_seconds histogram",
    ]
    lines += [f'sise_explain_seconds_bucket{{le="{b}"}} {n}' for b, n in zip(LATENCY_BUCKETS, buckets)]
    lines += [
        f'sise_explain_seconds_bucket{{le="+Inf"}} {count}',
        f"sise_explain_seconds_sum {total:.6f}",
        f"sise_explain_seconds_count {count}",
        "# HELP sise_queue_depth Images waiting: in the watched folder and uploads being explained.",
        "# TYPE sise_queue_depth gauge",
        f"sise_queue_depth {station.waiting_files() + in_flight}",
        "# HELP sise_unreviewed_parts Explained parts in the store without a verdict.",
        "# TYPE sise_unreviewed_parts gauge",
        f"sise_unreviewed_parts {figures['unreviewed']}",
        "# HELP sise_results Results in the store by status.",
        "# TYPE sise_results gauge",
    ]
    lines += [f'sise_results{{status="{s}"}} {n}' for s, n in sorted(figures["by_status"].items())]
    return "\n".join(lines) + "\n"
