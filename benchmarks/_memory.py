"""Peak CPU memory of one call, for the benchmark scripts (Linux /proc).

    with PeakRss() as peak:
        work()
    peak.extra_mb   # growth of the peak RSS over the RSS at entry

The kernel's peak mark (VmHWM) is reset at entry; where that is not allowed, the
process's lifetime peak is used instead, an upper bound.
"""

from __future__ import annotations

import resource
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakRss:
    def __enter__(self) -> PeakRss:
        self._start = _status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            self._reset = False
        self.extra_mb = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        peak = (
            _status_kib("VmHWM")
            if self._reset
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        )
        self.extra_mb = max(0, peak - self._start) / 1024
