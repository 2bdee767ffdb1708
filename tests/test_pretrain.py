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
from helpers import (
    ENV,
    PRETRAIN_PRESET,
    fsdp_shard_run,
    metrics,
    model_state,
    pretrain_cmd,
    python,
    run,
)

from birq_fs2.export import export_checkpoint
from birq_fs2.label_stats import codebook_usage, normalized_mutual_information
from birq_fs2.metrics import PRETRAIN_METRICS, display
from birq_fs2.recipes.pretrain.config import BirqScheduleSection
from birq_fs2.recipes.pretrain.recipe import StepSchedule


def recipe_cmd(out: Path, corpus: Path, *overrides: str) -> list[str]:
    return pretrain_cmd(
        out, corpus, "regime.num_steps=16",
        "regime.publish_metrics_every_n_steps=2", "regime.checkpoint_every_n_steps=4",
        "regime.validate_every_n_steps=8", "schedule.refine_start_step=4", "schedule.tau_decay=0.9",
        "lr_scheduler.config.num_warmup_steps=2", "optimizer.config.lr=0.002",
        "dataset.pipeline.max_frames=400", "dataset.pipeline.max_frames_per_batch=3200",
        *overrides,
    )  # fmt: skip


def test_schedule_is_a_pure_function_of_the_step():
    section = BirqScheduleSection(
        gamma=1.0,
        gamma_final=3.0,
        tau_max=2.0,
        tau_min=0.5,
        tau_decay=0.5,
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
    # Noise seeds: reproducible on resume, distinct per step, rank, micro-batch and stream.
    again = StepSchedule(section, 100, 7, 0)
    assert sched.noise_seed("train", 12, 0) == again.noise_seed("train", 12, 0)
    seeds = {
        sched.noise_seed("train", 12, 0), sched.noise_seed("train", 13, 0),
        sched.noise_seed("train", 12, 1), sched.noise_seed("valid", 12, 0),
        StepSchedule(section, 100, 7, 1).noise_seed("train", 12, 0),
        StepSchedule(section, 100, 8, 0).noise_seed("train", 12, 0),
    }  # fmt: skip
    assert len(seeds) == 6
    # One field: a step count, or None for a tenth of the steps (rounded down).
    assert StepSchedule(BirqScheduleSection(refine_start_step=1), 100, 0, 0).refine_start == 1
    assert StepSchedule(BirqScheduleSection(), 1234, 0, 0).refine_start == 123
    errors = BirqScheduleSection(refine_start_step=-1).validate().errors
    assert any("refine_start_step" in e for e in errors)


def test_gumbel_noise_differs_per_micro_batch_and_stream_and_repeats_on_resume():
    """The trainer calls set_step_nr once per step and process_batch once per micro-batch
    (gradient accumulation): the same batch twice in one step must draw different noise,
    validation its own, and a resumed unit the same again."""
    from fairseq2.datasets import SequenceBatch
    from fairseq2.metrics import MetricBag

    from birq_fs2.data.pipeline import DataStats
    from birq_fs2.models.config import ARCHS
    from birq_fs2.models.factory import create_birq_model
    from birq_fs2.recipes.pretrain.recipe import BirqEvalUnit, BirqTrainUnit

    torch.manual_seed(0)
    model = create_birq_model(ARCHS["tiny"]()).eval()  # no dropout: only the noise varies
    outputs = []

    def recording_model(*args):
        outputs.append(model(*args))
        return outputs[-1]

    x = torch.randn(2, 200, 80, generator=torch.Generator().manual_seed(1))
    batch = SequenceBatch(x, None, example={"ids": ["a", "b"]})
    schedule = StepSchedule(BirqScheduleSection(refine_start_step=0), 10, 0, 0)

    def labels_of_one_step(unit) -> list[torch.Tensor]:
        bag = MetricBag(device=torch.device("cpu"))
        unit.prepare_metric_bag(bag)
        outputs.clear()
        if isinstance(unit, BirqTrainUnit):
            unit.set_step_nr(3)
        else:
            unit.set_train_step_nr(3)
        for _ in range(2):  # gradient_accumulation 2, or two validation batches
            torch.manual_seed(0)  # the same mask each time
            unit.process_batch(batch, bag)
        return [o.enhanced_labels for o in outputs]

    first, second = labels_of_one_step(BirqTrainUnit(recording_model, model, schedule, DataStats()))
    assert first.shape == second.shape and not torch.equal(first, second)
    resumed = labels_of_one_step(BirqTrainUnit(recording_model, model, schedule, DataStats()))
    assert torch.equal(resumed[0], first) and torch.equal(resumed[1], second)
    valid = labels_of_one_step(BirqEvalUnit(recording_model, model, schedule))
    assert not torch.equal(valid[0], first) and not torch.equal(valid[0], valid[1])
    assert torch.equal(
        valid[0], labels_of_one_step(BirqEvalUnit(recording_model, model, schedule))[0]
    )


def test_enhanced_warmup_and_collapse_guard(caplog):
    from birq_fs2.data.pipeline import DataStats
    from birq_fs2.recipes.errors import LabelCollapseError
    from birq_fs2.recipes.pretrain.recipe import BirqEvalUnit, BirqTrainUnit, CollapseGuard

    section = BirqScheduleSection(refine_start_step=10, enhanced_warmup_steps=4, collapse_ratio=0.1)
    sched = StepSchedule(section, 100, 0, 0)
    assert [sched(s).enhanced_weight for s in (11, 12, 14, 50)] == [0.25, 0.5, 1.0, 1.0]
    assert StepSchedule(BirqScheduleSection(), 100, 0, 0)(50).enhanced_weight == 1.0

    unit = BirqTrainUnit(None, None, sched, DataStats())
    healthy = {"anchor_perplexity": torch.tensor(100.0), "enhanced_perplexity": torch.tensor(30.0)}
    collapsed = {"anchor_perplexity": torch.tensor(100.0), "enhanced_perplexity": torch.tensor(4.3)}
    with caplog.at_level("WARNING"):
        unit.process_metric_values(dict(healthy))
        assert "collapsed" not in caplog.text
        unit.process_metric_values(dict(collapsed))
        unit.process_metric_values(dict(collapsed))
    assert caplog.text.count("Enhanced labels collapsed") == 1  # one warning, with the numbers
    assert "code perplexity 4.3 against the anchor's 100.0" in caplog.text
    section.stop_on_collapse = True
    stopping = BirqTrainUnit(None, None, StepSchedule(section, 100, 0, 0), DataStats())
    with pytest.raises(LabelCollapseError, match="collapse_ratio = 0.1"):
        stopping.process_metric_values(dict(collapsed))

    # The second reading, at validation: noise-free labels can collapse while the sampled
    # ones look healthy (the noise alone spreads them). One guard, one warning per reading.
    section.stop_on_collapse = False
    guard = CollapseGuard(section)
    train = BirqTrainUnit(None, None, sched, DataStats(), guard)
    valid = BirqEvalUnit(None, None, sched, guard=guard)
    valid.set_train_step_nr(40)
    caplog.clear()
    with caplog.at_level("WARNING"):
        train.process_metric_values(dict(healthy))
        for _ in range(2):
            valid.process_metric_values({**healthy, "enhanced_noise_free_perplexity": 1.6})
    assert caplog.text.count("Enhanced labels collapsed at step 40") == 1
    assert "noise-free code perplexity (validation) 1.6 against the anchor's 100.0" in caplog.text


def test_label_statistics():
    labels = torch.tensor([[0], [1], [1], [3]])
    used, ppl = codebook_usage(labels, 8)
    assert used == 3 and ppl == pytest.approx(torch.exp(torch.tensor(1.0397)).item(), rel=1e-3)
    a = torch.tensor([0, 0, 1, 1, 2, 2])
    assert normalized_mutual_information(a, a * 5 + 1) == pytest.approx(1.0)
    assert normalized_mutual_information(a, torch.tensor([0, 1, 0, 1, 0, 1])) == pytest.approx(
        0.0, abs=1e-6
    )


@pytest.mark.slow
def test_pretrain_lowers_losses_resumes_after_kill_and_exports(tmp_path, corpus):
    out = tmp_path / "run"
    cmd = recipe_cmd(out, corpus)
    log = out / "logs" / "rank_0.log"
    first_output = tmp_path / "first-run.txt"
    with first_output.open("w") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
        )
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and "Checkpoint at step 8 saved" in log.read_text():
            os.killpg(proc.pid, signal.SIGKILL)  # kill -9 mid-run
            break
        time.sleep(0.2)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be interrupted"
    assert max(metrics(out)) < 16

    # The same command again: resumes from step 8 and finishes.
    rerun = run(cmd)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert "Restoring training from the last checkpoint at step 8." in log.read_text()
    by_step = metrics(out)
    assert max(by_step) == 16 and 10 in by_step

    # Schedules resumed at the right values.
    config = yaml.safe_load((out / "config.yaml").read_text())
    sched = StepSchedule(BirqScheduleSection(**config["schedule"]), 16, config["common"]["seed"], 0)
    enhanced_loss, anchor_loss = display("enhanced_loss"), display("anchor_loss")
    for step in (10, 16):
        assert by_step[step][display("tau")] == pytest.approx(
            (sched(step - 1).tau + sched(step).tau) / 2
        )
    # The enhanced metrics are recorded only once the stream is active (refine start at
    # step 4), and every metric of the table reaches the JSONL under its display name.
    assert enhanced_loss not in by_step[2] and by_step[16][enhanced_loss] > 0
    recorded = set().union(*(m.keys() for m in by_step.values()))
    with_diversity = {"diversity_loss"}  # recorded with enhanced.diversity_weight > 0 only
    assert {m.display for m in PRETRAIN_METRICS.values() if m.key not in with_diversity} <= recorded
    # A quiet run, before refine start (steps 1-3) and after, in training and validation:
    # no torcheval warnings about metrics "without updates" (sums that are exactly 0).
    everything = first_output.read_text() + rerun.stdout + rerun.stderr + log.read_text()
    assert "No calls to update()" not in everything

    # Both losses fall.
    assert by_step[16][anchor_loss] < by_step[2][anchor_loss] - 0.3
    first_enhanced = min(s for s in by_step if enhanced_loss in by_step[s])
    assert by_step[16][enhanced_loss] < by_step[first_enhanced][enhanced_loss]

    # Export: a card that fairseq2.models.load_model reads back to identical outputs
    # (compared in one process: same threads, so bit for bit).
    card = export_checkpoint(out, tmp_path / "cards", "birq_test_encoder")
    fields = yaml.safe_load(card.read_text())
    # The card carries the training features and no absolute path of this machine.
    assert fields["features"] == {"num_mel_bins": 80, "normalize": "utterance", "dither": 1e-4}
    assert fields["exported_from"] == "run/checkpoints/step_16"
    assert str(tmp_path) not in card.read_text()
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
    loaded = python(code, FAIRSEQ2_USER_ASSET_DIR=str(card.parent))
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == {
        "weights": True,
        "out": True,
        "layer": True,
    }
    meta = yaml.safe_load((out / "checkpoints" / "model.yaml").read_text())
    assert meta["model_config"]["encoder_config"]["model_dim"] == 144  # the preset's tiny arch

    # The same step laid out as a 2-rank FSDP run writes it (parameters sharded along
    # dim 0, buffers replicated) exports to the same weights.
    from birq_fs2.models.config import ARCHS
    from birq_fs2.models.factory import create_birq_model

    parameters = {k for k, _ in create_birq_model(ARCHS["tiny"]()).named_parameters()}
    fsdp_run = tmp_path / "fsdp_run"
    fsdp_shard_run(out, 16, fsdp_run, parameters)
    fsdp_card = export_checkpoint(fsdp_run, tmp_path / "fsdp_cards", "birq_fsdp")
    from safetensors.torch import load_file

    ddp_weights = load_file(str(card.parent / "birq_test_encoder.safetensors"))
    fsdp_weights = load_file(str(fsdp_card.parent / "birq_fsdp.safetensors"))
    assert ddp_weights.keys() == fsdp_weights.keys() == model_state(out, 16).keys()
    assert all(torch.equal(ddp_weights[k], fsdp_weights[k]) for k in ddp_weights)


def test_bestrq_run_logs_no_metric_warnings(tmp_path, corpus):
    """BEST-RQ has no enhanced stream: its enhanced-loss weight is 0 at every step and its
    enhanced metrics never update; neither may make torcheval warn."""
    proc = run(pretrain_cmd(
        tmp_path / "run", corpus, "model.arch=bestrq_tiny", "regime.num_steps=4",
        "regime.publish_metrics_every_n_steps=2", "regime.checkpoint_every_n_steps=4",
        "regime.validate_every_n_steps=2", "lr_scheduler.config.num_warmup_steps=2",
        "dataset.pipeline.max_frames=400", "dataset.pipeline.max_frames_per_batch=3200",
    ))  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Validation Metrics (step 4)" in out and "Enhanced Loss Weight: 0" in out
    assert "No calls to update()" not in out


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.config_overrides.enhanced.label_layer=9", "label_layer"),
        ("model.arch=nope", "nope"),
        ("schedule.tau_min=5.0", "tau_min"),
        ("schedule.refine_start_step=-1", "refine_start_step"),
        ("schedule.refine_start_fraction=0.5", "refine_start_fraction"),
        ("model.config_overrides.enhanced.label_grad=st", "write `label_grad: straight_through`"),
        ("dataset.pipeline.features.num_mel_bins=40", "features have 40 mel bins"),
        (
            "dataset.pipeline.max_frames_per_batch=3300",
            "must be a multiple of `max_frames` (400): 3200 or 3600",
        ),
    ],
)
def test_bad_configs_fail_at_start_up_naming_the_key(tmp_path, corpus, override, words):
    proc = run(recipe_cmd(tmp_path / "bad", corpus, override) + ["regime.num_steps=2"], timeout=300)
    assert proc.returncode != 0
    assert words in " ".join((proc.stdout + proc.stderr).split())  # rich wraps long lines
    assert not list((tmp_path / "bad" / "checkpoints").glob("step_*"))  # nothing trained


def test_export_errors_name_the_problem(tmp_path, capsys):
    from birq_fs2.cli.export import main

    assert main([str(tmp_path), str(tmp_path / "out"), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("birq-export: error: ") and len(err.splitlines()) == 1
    assert f"{tmp_path / 'checkpoints' / 'model.yaml'}: missing" in err
    # A run folder whose checkpoint lost its model state.
    (tmp_path / "checkpoints" / "step_4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "model.yaml").write_text("model_family: birq\nmodel_config: {}\n")
    assert main([str(tmp_path), str(tmp_path / "out"), "--name", "x"]) == 2
    assert "step_4/model/pp_00/tp_00/sdp_00.pt: missing" in capsys.readouterr().err


def test_report_plots_and_tabulates_a_run(tmp_path):
    from birq_fs2.cli.report import TABLE_KEYS
    from birq_fs2.cli.report import main as report_main
    from birq_fs2.metrics import series

    (tmp_path / "metrics" / "valid").mkdir(parents=True)
    rows = [{"Step": s, display("loss"): 9.0 - s / 10, display("anchor_loss"): 9.0 - s / 10,
             display("enhanced_loss"): 8.0 - s / 20, display("anchor_perplexity"): 100.0,
             display("enhanced_accuracy"): 0.0, display("label_nmi"): 0.5} for s in (2, 4, 6)]  # fmt: skip
    (tmp_path / "metrics" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "metrics" / "valid" / "valid.jsonl").write_text(json.dumps(rows[-1]) + "\n")
    assert report_main([str(tmp_path)]) == 0
    png = tmp_path / "report" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    md = (tmp_path / "report" / "REPORT.md").read_text()
    assert "| train | 2 | 8.800 |" in md and "| train | 6 | 8.400 |" in md and "| valid | 6 |" in md
    # A value of 0.0 is a value: tabulated and plotted, not dropped.
    accuracy_column = 3 + TABLE_KEYS.index("enhanced_accuracy")
    assert md.splitlines()[6].split("|")[accuracy_column].strip() == "0.000"
    assert series(rows, "enhanced_accuracy", PRETRAIN_METRICS) == [(2, 0.0), (4, 0.0), (6, 0.0)]
    assert report_main([str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("preset", ["tiny_cpu", "base_librispeech960", "large_librispeech960"])
def test_presets_structure_into_the_recipe_config(preset):
    cmd = [sys.executable, "-m", "birq_fs2.recipes.pretrain", "--dump-config", "--config-file",
           str(PRETRAIN_PRESET.parent / f"{preset}.yaml")]  # fmt: skip
    proc = run(cmd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dumped = yaml.safe_load(proc.stdout)
    assert dumped["model"]["family"] == "birq" and dumped["model"]["arch"] in (
        "tiny",
        "base",
        "large",
    )
    if preset == "tiny_cpu":  # a config typo fails and names the key
        typo = run(cmd + ["--config", "schedule.taumax=3"], timeout=300)
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
        model, model, StepSchedule(BirqScheduleSection(refine_start_step=0), 10, 0, 0), DataStats()
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


def test_paper_preset_is_tiny_cpu_with_the_papers_settings(tmp_path, corpus):
    """paper_tiny_cpu.yaml differs from tiny_cpu.yaml only where the paper publishes a
    value, and it runs: w1 0.1 and w2 2.4 from step 1, tau 0.5, labels from block 3 of 4
    with the gradient through them."""
    configs = PRETRAIN_PRESET.parent
    tiny, paper = (
        yaml.safe_load((configs / f).read_text()) for f in ("tiny_cpu.yaml", "paper_tiny_cpu.yaml")
    )
    assert paper.pop("schedule") == {
        **tiny.pop("schedule"), "refine_start_step": 0, "enhanced_weight": 0.1, "gamma": 2.4,
        "tau_max": 0.5, "tau_min": 0.5,
    }  # fmt: skip
    assert paper.pop("model") == {**tiny.pop("model"), "arch": "paper_tiny"} and paper == tiny
    from birq_fs2.models.config import ARCHS

    config = ARCHS["paper_tiny"]()
    assert (config.enhanced.label_grad, config.label_layer) == ("straight_through", 3)
    assert not config.validate().errors
    cmd = pretrain_cmd(
        tmp_path / "run", corpus, "regime.num_steps=2", "regime.checkpoint_every_n_steps=2",
        "regime.validate_every_n_steps=2", "regime.publish_metrics_every_n_steps=1",
        "lr_scheduler.config.num_warmup_steps=1", "dataset.pipeline.max_frames=400",
        "dataset.pipeline.max_frames_per_batch=3200",
    )  # fmt: skip
    cmd[cmd.index("--config-file") + 1] = str(configs / "paper_tiny_cpu.yaml")
    proc = run(cmd)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    first = metrics(tmp_path / "run")[1]
    assert first[display("enhanced_weight")] == pytest.approx(0.1)
    assert first[display("gamma")] == pytest.approx(2.4) and first[display("tau")] == 0.5
