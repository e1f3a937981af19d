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
    if station.publisher is not None:
        sinks = station.publisher.status()
        lines += ["# HELP sise_outbox_backlog Messages for the line's systems not yet delivered, by sink.",
                  "# TYPE sise_outbox_backlog gauge"]
        backlog = {s["sink"]: station.store.outbox_backlog(s["sink"]) for s in sinks}
        lines += [f'sise_outbox_backlog{{sink="{_label(name)}"}} {n}' for name, n in backlog.items()]
        lines += ["# HELP sise_sink_up 1 while the sink takes messages (0: the last attempt failed).",
                  "# TYPE sise_sink_up gauge"]
        lines += [f'sise_sink_up{{sink="{_label(s["sink"])}"}} {0 if s["error"] else 1}' for s in sinks]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A Prometheus label value: backslash, quote and line end escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
