"""Packaging: birq_kernels stands alone; the extension is found through its entry point."""

import os
import subprocess
import sys
from importlib import metadata, resources


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env={**os.environ, **env},
    )  # fmt: skip


def test_birq_kernels_never_imports_fairseq2():
    proc = _python(
        "import sys, birq_kernels, birq_kernels.aot; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fairseq2', 'fairseq2n', 'kernels')]; "
        "assert not bad, bad; print(birq_kernels.__file__)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(os.path.join("kernels", "__init__.py"))


def test_extension_entry_point_is_registered_and_loads():
    eps = metadata.entry_points(group="fairseq2.extension")
    assert [ep.value for ep in eps if ep.name == "birq_fs2"] == [
        "birq_fs2.extension:setup_birq_fs2"
    ]
    # With tracing on, a failing extension raises instead of logging a warning.
    proc = _python(
        "from fairseq2 import init_fairseq2; init_fairseq2(no_progress=True); print('ok')",
        FAIRSEQ2_EXTENSION_TRACE="1",
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_asset_cards_ship_as_package_data():
    cards = resources.files("birq_fs2.cards")
    assert cards.is_dir()
