"""Packaging: birq_kernels stands alone; the extension is found through its entry point."""

import os
from importlib import metadata, resources

from helpers import ROOT
from helpers import python as _python


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


def test_asset_cards_and_presets_ship_as_package_data():
    shipped = {
        f.name for f in resources.files("birq_fs2.cards").iterdir() if f.name.endswith(".yaml")
    }
    assert shipped == {f.name for f in (ROOT / "assets" / "cards").glob("*.yaml")} and shipped
    for recipe in ("pretrain", "finetune"):
        presets = resources.files(f"birq_fs2.recipes.{recipe}.configs")
        assert (presets / "tiny_cpu.yaml").is_file(), recipe
