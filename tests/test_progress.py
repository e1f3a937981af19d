"""Progress lines (inspector.common.progress): one line rewritten in place on a terminal, plain lines every
5 % elsewhere, and a rate and time left measured after the first report (whose batch carries start-up)."""

from __future__ import annotations

import io

from inspector.common.progress import Progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run(stream, clock, total=80, batch=8, first=5.0, each=1.0):
    """Batches of ``batch`` items: the first takes ``first`` s (start-up), the others ``each`` s."""
    progress = Progress(total, stream=stream, clock=clock)
    for k, done in enumerate(range(batch, total + 1, batch)):
        clock.now += first if k == 0 else each
        progress.update(done, f"batch {k}")
    progress.finish("handled")
    return stream.getvalue()


def test_a_log_gets_plain_lines_every_5_percent_and_a_summary():
    text = run(io.StringIO(), Clock(), total=400, batch=20)
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 21  # 20 steps of 5 %, and the summary
    assert lines[0].startswith("[20/400] ") and "eta --" in lines[0]  # no rate from one report
    assert lines[1] == "[40/400] 20.00 img/s, eta 18 s batch 1"  # 20 per second after the first batch
    assert lines[-1] == "handled: 400 of 400 in 24.0 s (16.67 img/s)"


def test_the_time_left_leaves_the_start_up_out():
    """80 images in batches of 8, the first batch 5 s (start-up), then 1 s each: after the second batch
    72 images... the old estimate (elapsed / done) said 27 s left where 8 s are."""
    text = run(io.StringIO(), Clock(), total=80, batch=8)
    second = text.splitlines()[1]
    assert second.startswith("[16/80] 8.00 img/s, eta 8 s")


def test_a_terminal_gets_one_line_rewritten_in_place():
    text = run(Terminal(), Clock(), total=40, batch=8)
    assert text.count("\r") == 5 and text.count("\n") == 2  # the line ended, then the summary
    assert text.rstrip().endswith("handled: 40 of 40 in 9.0 s (4.44 img/s)")
