"""benchmarks/evidence.py: its statistics (birq_fs2.experiments.stats), its run handling
(birq_fs2.experiments.runs), and its quick plan end to end (resumed too)."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tarfile

import numpy as np
import pytest
import yaml
from helpers import FIXTURES, ROOT, run

from birq_fs2.experiments.runs import (
    PRETRAIN_PRESET,
    finished,
    recipe_command,
    run_command,
    run_lock,
    run_metrics,
)
from birq_fs2.experiments.stats import (
    bootstrap_difference,
    interval_sign,
    mean_std,
    seed_interval,
)


def test_bootstrap_difference_is_paired_over_seeds_and_utterances():
    # (word errors, ref words, char errors, ref chars) per utterance; 40 utterances.
    base = {s: {f"u{i}": (2, 10, 4, 50) for i in range(40)} for s in (0, 1)}
    same = bootstrap_difference(base, base)
    assert same["wer_diff"] == 0 and same["wer_ci95"] == [0, 0] and same["seeds"] == [0, 1]
    better = {s: {u: (1, 10, 3, 50) for u in base[s]} for s in (0, 1)}
    c = bootstrap_difference(better, base)
    assert c["wer_diff"] == pytest.approx(-10.0) and c["cer_diff"] == pytest.approx(-2.0)
    assert c["wer_ci95"] == pytest.approx([-10.0, -10.0])  # every utterance differs alike
    assert c["wer_seed_ci95"] == pytest.approx([-10.0, -10.0])  # and every seed
    # Over seeds: t-interval of the per-seed differences (t 4.303 for 3 seeds).
    lo, hi = seed_interval(np.array([-3.0, -1.0, 1.0]))
    assert (lo, hi) == pytest.approx((-1 - 4.303 * 2 / 3**0.5, -1 + 4.303 * 2 / 3**0.5), abs=0.01)
    assert seed_interval(np.array([1.0])) is None
    # Half the utterances better, half worse: the mean is 0 and the interval straddles it.
    mixed = {s: {f"u{i}": (0 if i % 2 else 4, 10, 4, 50) for i in range(40)} for s in (0, 1)}
    m = bootstrap_difference(mixed, base)
    assert m["wer_diff"] == pytest.approx(0.0) and m["wer_ci95"][0] < 0 < m["wer_ci95"][1]
    assert interval_sign(m["wer_ci95"]) == 0 and interval_sign(c["wer_ci95"]) == -1
    assert interval_sign([0.5, 2.0]) == 1
    # Seeds only in one arm are left out of the pairing.
    assert bootstrap_difference({**better, 5: better[0]}, base)["seeds"] == [0, 1]


def test_mean_std_over_seeds():
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, 2**0.5))
    assert mean_std([4.0]) == (4.0, None)  # one seed: no spread


def test_a_run_in_flight_is_not_started_twice(tmp_path):
    lock = tmp_path / "locks" / "pretrain-bestrq-s0.lock"
    with run_lock(lock, "pretraining bestrq-s0"):
        with pytest.raises(RuntimeError, match="another evidence runner is running it now"):
            with run_lock(lock, "pretraining bestrq-s0"):
                pass
    with run_lock(lock, "pretraining bestrq-s0"):  # released: free again
        pass


def test_runners_sharing_a_plan_do_what_is_free_and_come_back(tmp_path, capsys):
    """Runner.run_plan: a task another runner holds waits while this one does the next,
    and is done once it is free (what `--jobs N`'s runners rely on)."""
    import threading

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from evidence import Runner

    runner = object.__new__(Runner)  # only the work folder and the task hooks matter here
    runner.work, done, order = tmp_path, set(), []
    runner.scored = lambda arm, seed: (arm, seed) in done

    def run_arm(arm, seed, cost_seed):
        order.append(arm)
        done.add((arm, seed))

    runner.run_arm = run_arm
    held = run_lock(tmp_path / "locks" / "task-bestrq-s0.lock", "bestrq seed 0")
    held.__enter__()  # another runner works on bestrq seed 0 ...
    threading.Timer(0.3, held.__exit__, (None, None, None)).start()  # ... and stops
    runner.run_plan([("bestrq", 0), ("birq", 0)], cost_seed=0, poll_s=0.1)
    assert order == ["birq", "bestrq"]
    assert "evidence: later: bestrq seed 0: another evidence runner" in capsys.readouterr().err
    runner.run_plan([("birq", 0), ("bestrq", 0)], cost_seed=0)  # done: nothing runs again
    assert order == ["birq", "bestrq"]


def test_the_compute_curve_prices_steps_by_the_plans_side_by_side_costs():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from evidence_plan import CURVE_STEP_COST, CURVES, step_seconds

    meta = {"equal_cost": {"birq_s_per_step": 0.36, "bestrq_s_per_step": 0.3, "ratio": 1.2},
            "equal_cost_of": {"birq_long_paper": {"ratio": 1.5, "bestrq_s_per_step": 0.45}}}  # fmt: skip
    assert set(CURVE_STEP_COST) == set(CURVES)
    assert step_seconds("bestrq", meta) == 0.3 and step_seconds("birq", meta) == 0.36
    # another form: its own ratio to BEST-RQ, on the side-by-side BEST-RQ step
    assert step_seconds("birq_long_paper", meta) == pytest.approx(0.45)
    assert step_seconds("birq", {}) is None  # not measured: each run's own timer instead


def test_recipe_runs_are_launched_and_read_alike(tmp_path):
    cmd = recipe_command("pretrain", tmp_path / "run", tmp_path / "corpus", "common.seed=3")
    assert cmd[1:] == ["-m", "birq_fs2.recipes.pretrain", str(tmp_path / "run"), "--config-file",
                       str(PRETRAIN_PRESET), "--config",
                       f"dataset.config_overrides.path={tmp_path / 'corpus'}", "common.seed=3"]  # fmt: skip
    assert PRETRAIN_PRESET.is_file()  # inside the installed package
    log = tmp_path / "logs" / "fail.log"
    code = "import sys; print('the cause'); sys.exit(3)"
    with pytest.raises(
        RuntimeError, match=r"(?s)a test failed \(exit 3; log .*fail\.log\).*the cause"
    ):
        run_command([sys.executable, "-c", code], log, "a test")
    assert log.read_text().startswith("$ ")  # the command, then its output
    run_dir = tmp_path / "run"
    (run_dir / "metrics").mkdir(parents=True)
    rows = [{"Step": 1, "Loss": 3.0}, {"Step": 2, "Loss": 2.0}, {"Step": 1, "Loss": 2.5}]
    (run_dir / "metrics" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_metrics(run_dir) == {1: {"Step": 1, "Loss": 2.5}, 2: {"Step": 2, "Loss": 2.0}}
    assert run_metrics(run_dir, "valid") == {}  # no validation yet
    assert not finished(run_dir, 2)
    (run_dir / "checkpoints" / "step_2").mkdir(parents=True)
    assert finished(run_dir, 2)


@pytest.mark.slow
def test_quick_plan_runs_end_to_end_and_resumes(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "evidence.py"), "--budget", "quick",
           "--work", str(work), "--out", str(out), "--eval-data", f"{FIXTURES}:dev-tiny"]  # fmt: skip
    # Two runners of one thread each share the plan's tasks (--jobs 2).
    proc = run([*cmd, "--arms", "comparison", "--jobs", "2"], timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "evidence: 2 runners of 1 thread(s) each" in proc.stderr
    for what in ("pretraining bestrq-s0", "pretraining birq-s0", "fine-tuning scratch-s0"):
        assert proc.stderr.count(f"evidence: {what} ...") == 1  # each run once, by one runner
    result = json.loads((out / "results.json").read_text())
    # the last report (--jobs' parent) lists every runner's wall-clock times
    assert result["wall_s"] == json.loads((work / "wall_s.json").read_text())
    assert "pretrain-birq-s0" in result["wall_s"]
    arms = ["scratch", "bestrq", "birq", "bestrq_cost"]
    assert [r["arm"] for r in result["runs"]] == arms
    for r in result["runs"]:
        assert 0 <= r["test"]["test"]["cer"] <= 200 and r["test"]["test"]["num_utterances"] > 0
        assert r["test"]["librispeech-dev-tiny"]["num_utterances"] > 0  # --eval-data
        assert (work / "models" / f"{r['arm']}-s0" / f"evidence_{r['arm']}-s0.yaml").exists()
        assert (r["pretrain"] is None) == (r["arm"] == "scratch")
    birq = next(r for r in result["runs"] if r["arm"] == "birq")["pretrain"]
    assert 0 <= birq["enhanced_pnmi"] <= 1 and birq["best_layer"]["block"] >= 1
    assert (
        result["equal_cost"]["ratio"] > 0 and "bestrq vs scratch" in result["comparisons"]["test"]
    )
    # Only the initial encoder differs: one labelled subset, one fine-tuning recipe.
    datasets = {
        json.dumps(yaml.safe_load((work / "finetune" / f"{a}-s0" / "config.yaml").read_text())["dataset"])
        for a in arms
    }  # fmt: skip
    assert len(datasets) == 1 and '"train_subset_seed": 0' in datasets.pop()
    report = (out / "REPORT.md").read_text()
    assert "Does BEST-RQ beat no pretraining?" in report and "(`bestrq_cost`)" in report
    # Every pretrained encoder is probed frozen (birq-probe), with the floors once per seed.
    probes = result["probes"]
    assert list(probes["per_arm"]) == ["bestrq", "birq", "bestrq_cost"]
    assert (
        set(probes["floors"]) == {"random", "fbank"} and "birq vs bestrq" in probes["comparisons"]
    )
    assert all(0 <= a["frame_accuracy"] <= 100 for a in probes["per_arm"].values())
    assert "## Phone probes of the frozen pretrained encoders" in report
    assert "Which yardstick separates the arms" in report
    assert (out / "dev_wer.png").stat().st_size > 0 and (out / "test_wer.png").stat().st_size > 0

    # The same command again: every run is found finished, nothing is trained again.
    walls = (work / "wall_s.json").read_text()
    again = run([*cmd, "--arms", "comparison"], timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "pretraining" not in again.stderr and "fine-tuning" not in again.stderr
    assert (work / "wall_s.json").read_text() == walls

    # A second runner with probes of the recipe and an arm of the second length: the
    # freeze probe fine-tunes the bestrq encoder already pretrained (no pretraining again),
    # the 3x equal-compute arm pretrains for 3x the steps that BiRQ's measured cost buys;
    # all join the same report.
    probes = run([*cmd, "--arms", "bestrq_freeze,scratch_lr5e-4,bestrq_cost_long"], timeout=600)
    assert probes.returncode == 0, (probes.stdout + probes.stderr)[-4000:]
    pretrained = re.findall(r"evidence: pretraining (\S+) \.\.\.", probes.stderr)
    assert pretrained == ["bestrq_cost_long-s0"]  # bestrq-s0 and the cost ratio are reused
    ratio = result["equal_cost"]["ratio"]
    long = yaml.safe_load((work / "pretrain" / "bestrq_cost_long-s0" / "config.yaml").read_text())
    assert long["regime"]["num_steps"] == max(12, round(12 * ratio))  # quick: 4 steps, 3x
    config = yaml.safe_load((work / "finetune" / "bestrq_freeze-s0" / "config.yaml").read_text())
    assert config["pretrained"]["freeze_encoder_for_n_steps"] == 50
    assert config["pretrained"]["model"].endswith("pretrain/bestrq-s0")
    lr = yaml.safe_load((work / "finetune" / "scratch_lr5e-4-s0" / "config.yaml").read_text())
    assert lr["optimizer"]["config"]["lr"] == 5e-4 and lr["pretrained"]["model"] is None
    result = json.loads((out / "results.json").read_text())
    assert [r["arm"] for r in result["runs"]] == [
        *arms,
        "bestrq_cost_long",
        "bestrq_freeze",
        "scratch_lr5e-4",
    ]
    assert "bestrq_freeze vs scratch" in result["comparisons"]["test"]
    assert (
        result["arms"]["bestrq_freeze"]["probe"] and not result["arms"]["bestrq_cost_long"]["probe"]
    )
    report = (out / "REPORT.md").read_text()
    assert "## Making pretraining pay" in report and "(`bestrq_freeze`) | `scratch`" in report
    assert "--arms bestrq_freeze,scratch_lr5e-4" in report and "## Error types" in report
    assert f"`bestrq_cost_long` pretrains BEST-RQ for {max(12, round(12 * ratio))} steps" in report
    # Two lengths of one method: the compute curve (quality against pretraining CPU time).
    assert "## Quality against pretraining compute" in report
    assert "seconds per step as this plan measured them side by side" in report
    assert "| BEST-RQ, equal compute | `bestrq_cost_long` |" in report
    assert (out / "compute_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The work folder lost: runs.tar.gz (committed next to the report) rewrites the same
    # report, statistics included, with no corpus, checkpoint or model.
    archive = (out / "runs.tar.gz").read_bytes()
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
        unpacked = tmp_path / "unpacked"
        tar.extractall(unpacked, filter="data")
    assert "eval/test/birq-s0/hypotheses.tsv" in names and "plan.json" in names
    assert not [n for n in names if n.startswith(("corpus/", "models/")) or "checkpoints" in n]
    shutil.rmtree(work)
    again_out = tmp_path / "again"
    rebuilt = run([sys.executable, str(ROOT / "benchmarks" / "evidence.py"), "--budget", "quick",
                   "--work", str(unpacked), "--out", str(again_out), "--report-only"], timeout=300)  # fmt: skip
    assert rebuilt.returncode == 0, (rebuilt.stdout + rebuilt.stderr)[-4000:]
    assert not (unpacked / "corpus").exists()  # nothing was synthesised or run
    assert json.loads((again_out / "results.json").read_text()) == result
    assert (again_out / "REPORT.md").read_text() == report
    assert (again_out / "runs.tar.gz").read_bytes() == archive  # byte-identical: no git churn


def test_an_equal_compute_arm_of_another_form_reads_its_own_ratio():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from evidence_plan import ARMS, BUDGETS, arm_pretrain_steps
    from evidence_report import _cost_lines

    full = BUDGETS["full"]
    meta = {
        "equal_cost": {"birq_s_per_step": 0.36, "bestrq_s_per_step": 0.3, "ratio": 1.2,
                       "measured_on": "side by side"},
        "equal_cost_of": {"birq_long_paper": {
            "birq_s_per_step": 0.45, "bestrq_s_per_step": 0.3, "ratio": 1.5,
            "measured_on": "interleaved 2 x 100-step runs of each, seed 0, on this plan's data",
            "arms": ["birq_long_paper", "bestrq_long"]}},
    }  # fmt: skip
    assert ARMS["bestrq_cost_paper"].cost_of == ("birq_long_paper", "bestrq_long")
    assert arm_pretrain_steps("bestrq_cost_long", full, meta) == 1440  # 1200 x 1.2
    assert arm_pretrain_steps("bestrq_cost_paper", full, meta) == 1800  # 1200 x 1.5
    assert arm_pretrain_steps("birq_long_paper", full, meta) == 1200
    stats = {"per_arm": {"bestrq_cost_long": {}, "bestrq_cost_paper": {}}}
    text = "\n".join(_cost_lines(full, meta, stats))
    assert "`bestrq_cost_long` pretrains BEST-RQ for 1440 steps" in text
    assert "Equal compute to `birq_long_paper`: its training step cost 0.450 s against " in text
    assert "`bestrq_cost_paper` pretrains BEST-RQ for 1800 steps" in text


def test_the_second_labelled_size_reuses_the_long_encoders():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from evidence_plan import ARM_GROUPS, ARMS, BUDGETS
    from evidence_report import _own_labelled

    hour = ARM_GROUPS["hour"].split(",")
    assert [ARMS[a].encoder_of for a in hour] == [
        None,
        "bestrq_long",
        "birq_long",
        "birq_long_paper",
    ]
    assert all(ARMS[a].labelled_minutes == 60 and ARMS[a].finetune_scale == 2 for a in hour)
    meta = {"labelled_by_arm": {a: {"minutes": 59.8, "fraction": 0.4983} for a in hour[:2]}}
    (line,) = _own_labelled(BUDGETS["full"], meta)
    assert line.startswith("Second labelled size: 59.8 minutes (dataset.train_fraction 0.4983")
    assert "600 fine-tuning steps: `scratch_1h`, `bestrq_long_1h`." in line


def test_paper_arm_overrides_are_the_paper_preset():
    """evidence_plan.PAPER_OVERRIDES applied to tiny_cpu.yaml give paper_tiny_cpu.yaml."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from evidence_plan import ARMS, PAPER_OVERRIDES

    configs = ROOT / "birq_fs2" / "recipes" / "pretrain" / "configs"
    config = yaml.safe_load((configs / "tiny_cpu.yaml").read_text())
    for override in PAPER_OVERRIDES:
        key, value = override.split("=")
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = yaml.safe_load(value)
    assert config == yaml.safe_load((configs / "paper_tiny_cpu.yaml").read_text())
    assert ARMS["birq_long_paper"].pretrain[: len(PAPER_OVERRIDES)] == PAPER_OVERRIDES


def test_the_reading_answers_the_equal_compute_question_from_the_probes():
    """The curve's question in words: the answer follows the PER intervals of every length of
    BiRQ's defaults; another form's equal-compute arm is reported but does not decide it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from evidence_report import representation_at_equal_compute

    def comp(per_ci, seed_ci):
        mid = sum(per_ci) / 2
        return {"seeds": [0, 1, 2], "per_diff": mid, "per_ci95": per_ci, "per_seed_ci95": seed_ci,
                "frame_accuracy_diff": -mid, "frame_accuracy_ci95": [-per_ci[1], -per_ci[0]],
                "frame_accuracy_seed_ci95": seed_ci and [-seed_ci[1], -seed_ci[0]]}  # fmt: skip

    def answer(comps):
        (line,) = representation_at_equal_compute({"probes": {"comparisons": comps}})
        return line.split("**")[1]

    better, tie, worse = (
        comp([-3.0, -1.0], [-4.0, -0.5]),
        comp([-1.0, 1.0], [-2.0, 2.0]),
        comp([1.0, 2.0], None),
    )
    assert representation_at_equal_compute({"probes": None}) == []
    assert answer(
        {"birq vs bestrq_cost": better, "birq_long vs bestrq_cost_long": better}
    ).startswith("Yes, at every length measured, over test utterances and over seeds")
    assert answer({"birq vs bestrq_cost": tie, "birq_9x vs bestrq_cost_9x": tie}).startswith(
        "Not distinguishable"
    )
    mixed = answer({"birq vs bestrq_cost": tie, "birq_long vs bestrq_cost_long": worse,
                    "birq_9x vs bestrq_cost_9x": better})  # fmt: skip
    assert (
        mixed
        == "Not at every length: the budget's steps undecided, 3x the steps worse, 9x the steps better."
    )
    # the paper form's own equal-compute arm is reported, not counted in the answer
    line = representation_at_equal_compute(
        {
            "probes": {
                "comparisons": {
                    "birq vs bestrq_cost": worse,
                    "birq_long_paper vs bestrq_cost_paper": better,
                }
            }
        }
    )[0]
    assert "**No, it is worse at every length measured.**" in line
    assert (
        "The paper form (label_grad_scale 0.01) at 3x the steps (3 seeds): PER -2.0 points" in line
    )
    assert (
        "(95 % CI over utterances [-3.00, -1.00], over 3 seeds [-4.00, -0.50]: BiRQ better over seeds too)"
        in line
    )


def test_bestrq_compute_for_a_birq_point_reads_the_bestrq_curve_in_log_compute():
    """The efficiency in the paper's terms: the least compute at which BEST-RQ's mean
    curve (both BEST-RQ lines pooled) reaches a BiRQ point's quality."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from evidence_report import bestrq_compute_for, equivalent_compute_lines

    curves = {
        "BEST-RQ": [{"arm": "bestrq", "compute_h": 1.0, "per": 80.0},
                    {"arm": "bestrq_long", "compute_h": 4.0, "per": 70.0}],
        "BEST-RQ, equal compute": [{"arm": "bestrq_cost_long", "compute_h": 16.0, "per": 60.0}],
        "BiRQ (defaults)": [{"arm": "birq", "compute_h": 1.0, "per": 75.0},
                            {"arm": "birq_long", "compute_h": 4.0, "per": 85.0},
                            {"arm": "birq_9x", "compute_h": 16.0, "per": 55.0}],
    }  # fmt: skip
    relation, hours = bestrq_compute_for(curves, "per", 75.0)
    assert relation == "=" and hours == pytest.approx(2.0)  # half way in log(1)..log(4)
    assert bestrq_compute_for(curves, "per", 65.0)[1] == pytest.approx(8.0)
    assert bestrq_compute_for(curves, "per", 85.0) == ("<=", 1.0)
    assert bestrq_compute_for(curves, "per", 55.0) == (">", 16.0)
    assert bestrq_compute_for(curves, "wer", 50.0) is None
    rows = [line for line in equivalent_compute_lines(curves) if line.startswith("| `")]
    assert rows[0].startswith("| `birq` | 1 | 2.00x |")
    assert "at most 0.25x" in rows[1] and "more than 1.00x" in rows[2]
