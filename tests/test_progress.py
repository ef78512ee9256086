"""Progress lines for log files: steady cadence, done/total, rate and ETA, with a fake clock."""

from __future__ import annotations

import logging
import re

import pytest

from slidesnake.progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_at_a_steady_interval_with_rate_and_eta(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="t")
    progress = Progress(5000, "features s.svs", interval=30, logger=logging.getLogger("t"), clock=clock)
    # 64 patches every 1.5 s (42.67 patches/s) for 60 s of fake time: 40 updates
    for _ in range(40):
        clock.now += 1.5
        progress.update(64)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # at t=30 and t=60, not once per batch
    assert lines[0] == "features s.svs: 1,280/5,000 patches (25.6%), 42.7 patches/s, elapsed 30s, ETA 1m27s"
    # second line: 2,560 done, 2,440 left at 42.67/s = 57.2 s
    assert lines[1] == "features s.svs: 2,560/5,000 patches (51.2%), 42.7 patches/s, elapsed 1m00s, ETA 57s"
    progress.close()
    progress.close()  # idempotent
    assert caplog.records[-1].getMessage() == (
        "features s.svs: 2,560/5,000 patches (51.2%), 42.7 patches/s, elapsed 1m00s, done"
    )
    assert len(caplog.records) == 3


def test_a_slow_batch_gives_one_line_then_the_cadence_restarts(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="t")
    progress = Progress(None, "epochs", unit="steps", interval=10, logger=logging.getLogger("t"), clock=clock)
    clock.now += 95  # one update after 95 s: one line, not nine catch-up lines
    progress.update(10)
    clock.now += 5
    progress.update(1)  # 5 s after the last line: silent
    clock.now += 5
    progress.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert re.fullmatch(r"epochs: 10 steps, 0\.1 steps/s, elapsed 1m35s", lines[0])  # no total: no ETA
    assert lines[1].startswith("epochs: 12 steps, 0.1 steps/s, elapsed 1m45s")


def test_format_duration_and_bad_interval():
    assert [format_duration(s) for s in (0, 59.4, 61, 3599, 7500)] == ["0s", "59s", "1m01s", "59m59s", "2h05m"]
    assert format_duration(float("nan")) == "?" and format_duration(float("inf")) == "?"
    with pytest.raises(ValueError, match="interval"):
        Progress(10, "x", interval=0)
