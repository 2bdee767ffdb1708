"""fairseq2 extension entry point (``[project.entry-points."fairseq2.extension"]``).

fairseq2 calls `setup_birq_fs2` with its dependency container once per process, after
its own families are registered. Model and dataset families register here as they land.
"""

from __future__ import annotations

from fairseq2.composition import register_package_assets
from fairseq2.runtime.dependency import DependencyContainer


def setup_birq_fs2(container: DependencyContainer) -> None:
    # Asset cards shipped in the wheel (assets/cards/ in a source checkout).
    register_package_assets(container, "birq_fs2.cards")
