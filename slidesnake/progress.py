"""Progress a person can follow in a log file: periodic ``logging`` lines with done/total, rate and ETA.

tqdm hides its bar when stderr is not a terminal (every Snakemake job logs to a file), so a long
extraction or training run showed nothing until it ended. :class:`Progress` logs one line at most
every ``interval`` seconds, plus a final line, through the caller's logger:

    features TCGA-XX.svs: 1,280/5,000 patches (25.6%), 42.7 patches/s, elapsed 30s, ETA 1m27s
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

__all__ = ["DEFAULT_INTERVAL_S", "Progress", "format_duration"]

DEFAULT_INTERVAL_S = 30.0


def format_duration(seconds: float) -> str:
    """Compact duration: 45s, 3m07s, 2h05m; '?' when unknown (no rate yet)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Count work done and log a progress line every ``interval`` seconds (and once at the end).

    ``clock`` is injectable (monotonic seconds) so the cadence can be tested without sleeping. The
    rate is the mean since the start, which is what an ETA for a steady batch loop needs.
    """

    def __init__(
        self,
        total: int | None,
        what: str,
        *,
        unit: str = "patches",
        interval: float = DEFAULT_INTERVAL_S,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"progress interval must be > 0 seconds, got {interval}")
        self.total = total
        self.what = what
        self.unit = unit
        self.interval = float(interval)
        self.log = logger or logging.getLogger("slidesnake.progress")
        self.clock = clock
        self.done = 0
        self.start = clock()
        self._next = self.start + self.interval
        self._closed = False
        self.lines = 0

    def update(self, n: int = 1) -> None:
        """Add ``n`` units; log a line if the interval has passed since the last one."""
        self.done += int(n)
        now = self.clock()
        if now >= self._next:
            self._emit(now)
            # steady cadence: the next line is due one interval after this one, never in a burst
            self._next = now + self.interval

    def close(self) -> None:
        """Log the final line (total, mean rate, elapsed); idempotent."""
        if not self._closed:
            self._closed = True
            self._emit(self.clock(), final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def line(self, now: float, final: bool = False) -> str:
        """The progress line at clock time ``now``."""
        elapsed = max(0.0, now - self.start)
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        rate_text = f"{rate:.1f} {self.unit}/s" if math.isfinite(rate) else f"? {self.unit}/s"
        if self.total:
            count = f"{self.done:,}/{self.total:,} {self.unit} ({100.0 * self.done / self.total:.1f}%)"
        else:
            count = f"{self.done:,} {self.unit}"
        text = f"{self.what}: {count}, {rate_text}, elapsed {format_duration(elapsed)}"
        if final:
            return text + ", done"
        if self.total:
            remaining = max(0, self.total - self.done)
            eta = remaining / rate if math.isfinite(rate) and rate > 0 else float("nan")
            text += f", ETA {format_duration(eta)}"
        return text

    def _emit(self, now: float, final: bool = False) -> None:
        self.lines += 1
        self.log.info("%s", self.line(now, final))
