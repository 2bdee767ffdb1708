"""Recipe runs as experiments see them: launching (and resuming) one, and reading its folder."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {row["Step"]: row for row in rows}  # a resumed run may repeat a step
    return [by_step[s] for s in sorted(by_step)]
