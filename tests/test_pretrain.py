"""The pretraining recipe end to end: losses fall, kill -9 and resume, schedules, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from birq_fs2.cli.export import export_checkpoint
from birq_fs2.recipes.pretrain.config import BirqScheduleSection
from birq_fs2.recipes.pretrain.recipe import (
    StepSchedule,
    codebook_usage,
    normalized_mutual_information,
)

PRESET = (
    Path(__file__).parents[1] / "birq_fs2" / "recipes" / "pretrain" / "configs" / "tiny_cpu.yaml"
)


def recipe_cmd(out: Path, corpus: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "birq_fs2.recipes.pretrain", str(out), "--config-file", str(PRESET),
        "--config", f"dataset.config_overrides.path={corpus}", "regime.num_steps=16",
        "regime.publish_metrics_every_n_steps=2", "regime.checkpoint_every_n_steps=4",
        "regime.validate_every_n_steps=8", "schedule.refine_start=4", "schedule.tau_decay=0.9",
        "lr_scheduler.config.num_warmup_steps=2", "optimizer.config.lr=0.002",
        "dataset.pipeline.max_frames=400", "dataset.pipeline.max_frames_per_batch=3200",
        *overrides,
    ]  # fmt: skip


def test_schedule_is_a_pure_function_of_the_step():
    section = BirqScheduleSection(
        refine_start=0.1, gamma=1.0, gamma_final=3.0, tau_max=2.0, tau_min=0.5, tau_decay=0.5
    )
    sched = StepSchedule(section, num_steps=100, seed=7, rank=0)
    assert sched.refine_start == 10
    assert not sched(10).enhanced_active and sched(11).enhanced_active
    assert (
        sched(10).tau == 2.0
        and sched(11).tau == 1.0
        and sched(13).tau == 0.5
        and sched(90).tau == 0.5
    )
    assert (
        sched(10).gamma == 1.0 and sched(55).gamma == pytest.approx(2.0) and sched(100).gamma == 3.0
    )
    assert sched(12).seed == StepSchedule(section, 100, 7, 0)(12).seed  # reproducible on resume
    assert sched(12).seed != sched(13).seed != StepSchedule(section, 100, 7, 1)(13).seed


def test_label_statistics():
    labels = torch.tensor([[0], [1], [1], [3]])
    used, ppl = codebook_usage(labels, 8)
    assert used == 3 and ppl == pytest.approx(torch.exp(torch.tensor(1.0397)).item(), rel=1e-3)
    a = torch.tensor([0, 0, 1, 1, 2, 2])
    assert normalized_mutual_information(a, a * 5 + 1) == pytest.approx(1.0)
    assert normalized_mutual_information(a, torch.tensor([0, 1, 0, 1, 0, 1])) == pytest.approx(
        0.0, abs=1e-6
    )


def _train_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics" / "train.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_pretrain_lowers_losses_resumes_after_kill_and_exports(tmp_path, corpus):
    out = tmp_path / "run"
    cmd = recipe_cmd(out, corpus)
    env = {**os.environ, "FAIRSEQ2_NO_PROGRESS": "1"}
    log = out / "logs" / "rank_0.log"
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and "Checkpoint at step 8 saved" in log.read_text():
            os.killpg(proc.pid, signal.SIGKILL)  # kill -9 mid-run
            break
        time.sleep(0.2)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    interrupted_steps = [m["Step"] for m in _train_metrics(out)]
    assert max(interrupted_steps) < 16

    # The same command again: resumes from step 8 and finishes.
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert "Restoring training from the last checkpoint at step 8." in log.read_text()
    metrics = _train_metrics(out)
    steps = [m["Step"] for m in metrics]
    assert steps[-1] == 16 and 10 in steps
    by_step = {m["Step"]: m for m in metrics}

    # Schedules resumed at the right values.
    config = yaml.safe_load((out / "config.yaml").read_text())
    sched = StepSchedule(BirqScheduleSection(**config["schedule"]), 16, config["common"]["seed"], 0)
    for step in (10, 16):
        assert by_step[step]["Gumbel Tau"] == pytest.approx(
            (sched(step - 1).tau + sched(step).tau) / 2
        )
    assert by_step[2].get("Enhanced Loss", 0.0) == 0.0 and by_step[16]["Enhanced Loss"] > 0

    # Both losses fall.
    assert by_step[16]["Anchor Loss"] < by_step[2]["Anchor Loss"] - 0.3
    first_enhanced = min(s for s in by_step if by_step[s].get("Enhanced Loss", 0.0) > 0)
    assert by_step[16]["Enhanced Loss"] < by_step[first_enhanced]["Enhanced Loss"]

    # Export: a card that fairseq2.models.load_model reads back to identical outputs
    # (compared in one process: same threads, so bit for bit).
    card = export_checkpoint(out, tmp_path / "cards", "birq_test_encoder")
    shard = out / "checkpoints" / "step_16" / "model" / "pp_00" / "tp_00" / "sdp_00.pt"
    code = f"""
import json, torch
from fairseq2 import init_fairseq2
from fairseq2.models import load_model
from fairseq2.nn import BatchLayout
from birq_fs2.models.config import ARCHS
from birq_fs2.models.factory import create_birq_model
init_fairseq2(no_progress=True)
loaded = load_model("birq_test_encoder", device=torch.device("cpu")).eval()
trained = create_birq_model(ARCHS["tiny"]())
trained.load_state_dict(torch.load({str(shard)!r}))
trained.eval()
x = torch.randn(2, 200, 80, generator=torch.Generator().manual_seed(0))
layout = BatchLayout(x.shape[:2], seq_lens=[200, 150])
a, _, la = loaded.encode(x, layout, layers=(2,))
b, _, lb = trained.encode(x, layout, layers=(2,))
same_weights = all(torch.equal(v, trained.state_dict()[k]) for k, v in loaded.state_dict().items())
print(json.dumps({{"weights": same_weights, "out": torch.equal(a, b), "layer": torch.equal(la[2], lb[2])}}))
"""
    env_load = {**os.environ, "FAIRSEQ2_USER_ASSET_DIR": str(card.parent)}
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env_load, timeout=300
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == {
        "weights": True,
        "out": True,
        "layer": True,
    }
    meta = yaml.safe_load((out / "checkpoints" / "model.yaml").read_text())
    assert meta["model_config"]["encoder_config"]["model_dim"] == 144  # the preset's tiny arch


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.config_overrides.enhanced.label_layer=9", "label_layer"),
        ("model.arch=nope", "nope"),
        ("schedule.tau_min=5.0", "tau_min"),
    ],
)
def test_bad_configs_fail_at_start_up_naming_the_key(tmp_path, corpus, override, words):
    proc = subprocess.run(
        recipe_cmd(tmp_path / "bad", corpus, override) + ["regime.num_steps=2"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "FAIRSEQ2_NO_PROGRESS": "1"},
    )  # fmt: skip
    assert proc.returncode != 0
    assert words in proc.stdout + proc.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_export_errors_name_the_problem(tmp_path):
    from birq_fs2.cli.export import main

    assert main([str(tmp_path), str(tmp_path / "out"), "--name", "x"]) == 2


def test_report_plots_and_tabulates_a_run(tmp_path):
    from birq_fs2.report import main as report_main

    (tmp_path / "metrics" / "valid").mkdir(parents=True)
    rows = [{"Step": s, "Loss": 9.0 - s / 10, "Anchor Loss": 9.0 - s / 10, "Enhanced Loss": 8.0 - s / 20,
             "Anchor Code Perplexity": 100.0, "Anchor/Enhanced Label NMI": 0.5} for s in (2, 4, 6)]  # fmt: skip
    (tmp_path / "metrics" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "metrics" / "valid" / "valid.jsonl").write_text(json.dumps(rows[-1]) + "\n")
    assert report_main([str(tmp_path)]) == 0
    png = tmp_path / "report" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    md = (tmp_path / "report" / "REPORT.md").read_text()
    assert "| train | 2 | 8.800 |" in md and "| train | 6 | 8.400 |" in md and "| valid | 6 |" in md
    assert report_main([str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("preset", ["tiny_cpu", "base_librispeech960", "large_librispeech960"])
def test_presets_structure_into_the_recipe_config(preset):
    cmd = [sys.executable, "-m", "birq_fs2.recipes.pretrain", "--dump-config", "--config-file",
           str(PRESET.parent / f"{preset}.yaml")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dumped = yaml.safe_load(proc.stdout)
    assert dumped["model"]["family"] == "birq" and dumped["model"]["arch"] in (
        "tiny",
        "base",
        "large",
    )
    if preset == "tiny_cpu":  # a config typo fails and names the key
        typo = subprocess.run(
            cmd + ["--config", "schedule.taumax=3"], capture_output=True, text=True, timeout=300
        )
        assert typo.returncode != 0 and "taumax" in typo.stdout + typo.stderr


def test_a_non_finite_loss_stops_training_with_the_step_number():
    from fairseq2.datasets import SequenceBatch
    from fairseq2.metrics import MetricBag

    from birq_fs2.data.pipeline import DataStats
    from birq_fs2.models.config import ARCHS
    from birq_fs2.models.factory import create_birq_model
    from birq_fs2.recipes.pretrain.recipe import BirqTrainUnit

    model = create_birq_model(ARCHS["tiny"]())
    unit = BirqTrainUnit(
        model, model, StepSchedule(BirqScheduleSection(refine_start=0), 10, 0, 0), DataStats()
    )
    bag = MetricBag(device=torch.device("cpu"))
    unit.prepare_metric_bag(bag)
    unit.set_step_nr(3)
    x = torch.randn(2, 200, 80)
    loss, n = unit.process_batch(SequenceBatch(x, None, example={"ids": ["a", "b"]}), bag)
    assert torch.isfinite(loss) and n > 0
    x[0] = float("nan")  # whole utterance: masking cannot hide it from the encoder
    with pytest.raises(
        FloatingPointError, match=r"Non-finite loss at step 3 .*utterances \['a', 'b'\]"
    ):
        unit.process_batch(SequenceBatch(x, None, example={"ids": ["a", "b"]}), bag)
