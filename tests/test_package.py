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


def _imports(path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_floors_no_import_runs_from_the_library_up_to_a_command():
    """Commands (birq_fs2/cli) and experiments sit on top: the library, the models and the
    recipes never import them, and experiments import no command."""
    package = ROOT / "birq_fs2"
    upward = []
    for path in sorted(package.rglob("*.py")):
        floor = path.relative_to(package).parts[0]
        if floor == "cli":
            continue
        above = (
            ("birq_fs2.cli",)
            if floor == "experiments"
            else ("birq_fs2.cli", "birq_fs2.experiments")
        )
        upward += [f"{path.relative_to(ROOT)} imports {name}" for name in _imports(path)
                   if name.startswith(above)]  # fmt: skip
    assert not upward, upward
