"""The evidence's plan: its budgets, its arms (what each pretrains and fine-tunes) and the
comparisons between them; benchmarks/evidence.py runs it, benchmarks/evidence_report.py
writes its report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUBSET_SEED = 0
"""One labelled subset for every arm and seed: only the initial encoder differs."""


@dataclass(frozen=True)
class Budget:
    hours: float
    """Training audio of the synthetic corpus (dev and test: 10 % of it each, other speakers)."""
    speakers: int
    labelled_minutes: float
    pretrain_steps: int
    pretrain_validate_every: int
    finetune_steps: int
    finetune_validate_every: int
    label_utterances: int
    """Dev utterances of the layer analysis (birq-labels) of each pretrained encoder."""
    seeds: str
    probe_utterances: tuple[int, int] = (600, 200)
    """birq-probe's train and dev/test utterances (the corpus's own splits' speakers)."""
    probe_epochs: int = 20


BUDGETS = {
    "quick": Budget(
        hours=0.03, speakers=6, labelled_minutes=1.0, pretrain_steps=4,
        pretrain_validate_every=2, finetune_steps=4, finetune_validate_every=2,
        label_utterances=10, seeds="0", probe_utterances=(20, 10), probe_epochs=2,
    ),
    "full": Budget(
        hours=2.0, speakers=40, labelled_minutes=10.0, pretrain_steps=400,
        pretrain_validate_every=100, finetune_steps=300, finetune_validate_every=50,
        label_utterances=200, seeds="0,1,2",
    ),
    # The compute curve: the same arms at 1x, 3x and 9x the steps on 8 h of unlabelled
    # speech (so that 3600 steps are about 4 passes, not 15), the same 10 labelled minutes.
    "curve": Budget(
        hours=8.0, speakers=80, labelled_minutes=10.0, pretrain_steps=400,
        pretrain_validate_every=100, finetune_steps=300, finetune_validate_every=50,
        label_utterances=200, seeds="0,1,2",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Arm:
    title: str
    pretrain: list[str] | None
    """Pretraining overrides; None: no pretraining (the fine-tuning starts from scratch)."""
    equal_cost: bool = False
    """Pretrained for the steps that BiRQ's measured step cost buys, not the budget's."""
    cost_of: tuple[str, str] | None = None
    """Equal-compute arms of another BiRQ form: (that form's arm, the BEST-RQ arm of the same
    steps); the ratio of their step costs in this plan's cost-seed runs sets the steps.
    None: BiRQ's defaults, at the side-by-side ratio (benchmarks/train_throughput.py)."""
    finetune: tuple[str, ...] = ()
    """Fine-tuning overrides (probes of the fine-tuning recipe; empty for the comparison)."""
    encoder_of: str | None = None
    """Fine-tune the encoder that arm pretrained (same seed) instead of pretraining again."""
    pretrain_scale: float = 1.0
    """Pretraining steps as a multiple of the budget's."""
    baseline: str | None = None
    """Probes only: the arm it is compared with (same fine-tuning recipe, or the default)."""
    labelled_minutes: float | None = None
    """Labelled audio of the fine-tuning (None: the budget's)."""
    finetune_scale: float = 1.0
    """Fine-tuning steps as a multiple of the budget's."""
    knob: bool = False
    """A comparison arm that is also a row of "making pretraining pay" (against `scratch`):
    the knob it changes (here: pretraining length) is one that was tried to make it pay."""

    @property
    def probe(self) -> bool:
        """Part of "making pretraining pay" (one recipe knob changed), not the comparison."""
        return self.baseline is not None

    @property
    def pretrained(self) -> bool:
        return self.pretrain is not None or self.encoder_of is not None


ARM_TITLES_1H = {
    "scratch": "no pretraining", "bestrq_long": "BEST-RQ, 3x pretraining steps",
    "birq_long": "BiRQ (defaults), 3x pretraining steps",
    "birq_long_paper": "BiRQ at the paper's settings, label_grad_scale 0.01, 3x pretraining steps",
}  # fmt: skip
ENH = "model.config_overrides.enhanced"
CONV = "model.config_overrides.conv_module"
PAPER_OVERRIDES = [
    "model.arch=paper_tiny", "schedule.refine_start_step=0", "schedule.enhanced_weight=0.1",
    "schedule.gamma=2.4", "schedule.tau_max=0.5", "schedule.tau_min=0.5",
]  # fmt: skip
"""paper_tiny_cpu.yaml as overrides of tiny_cpu.yaml (tests/test_evidence.py checks it)."""
ARMS: dict[str, Arm] = {
    "scratch": Arm("no pretraining", None),
    "bestrq": Arm("BEST-RQ, equal steps", ["model.arch=bestrq_tiny"]),
    "birq": Arm("BiRQ (defaults)", []),
    "bestrq_cost": Arm("BEST-RQ, equal compute", ["model.arch=bestrq_tiny"], equal_cost=True),
    # The same comparison at 3x the pretraining steps: the first length at which BEST-RQ
    # paid in the 10-minute regime (found as a probe, `bestrq_long`, which kept its name).
    "bestrq_long": Arm(
        "BEST-RQ, 3x pretraining steps", ["model.arch=bestrq_tiny"], pretrain_scale=3.0, knob=True
    ),
    "birq_long": Arm("BiRQ (defaults), 3x pretraining steps", [], pretrain_scale=3.0),
    "bestrq_cost_long": Arm(
        "BEST-RQ, equal compute to `birq_long`",
        ["model.arch=bestrq_tiny"],
        equal_cost=True,
        pretrain_scale=3.0,
    ),
    # The convolution module (model.conv_module): w2v-BERT 2.0's causal layer-norm one,
    # which the transformers export needs; fine-tuned with the birq_ctc family.
    # The third point of the compute curve (`--arms curve`).
    "bestrq_9x": Arm(
        "BEST-RQ, 9x pretraining steps", ["model.arch=bestrq_tiny"], pretrain_scale=9.0
    ),
    "birq_9x": Arm("BiRQ (defaults), 9x pretraining steps", [], pretrain_scale=9.0),
    "bestrq_cost_9x": Arm(
        "BEST-RQ, equal compute to `birq_9x`",
        ["model.arch=bestrq_tiny"],
        equal_cost=True,
        pretrain_scale=9.0,
    ),
    "birq_long_ln": Arm(
        "BiRQ (defaults), layer-norm causal convolutions, 3x pretraining steps",
        [f"{CONV}.norm=layer_norm", f"{CONV}.causal=true"],
        finetune=("model.family=birq_ctc", f"{CONV}.norm=layer_norm", f"{CONV}.causal=true"),
        pretrain_scale=3.0,
    ),
    "birq_long_ln_centred": Arm(
        "BiRQ (defaults), layer-norm centred convolutions, 3x pretraining steps",
        [f"{CONV}.norm=layer_norm"],
        finetune=("model.family=birq_ctc", f"{CONV}.norm=layer_norm"),
        pretrain_scale=3.0,
    ),
    # BiRQ's own mechanism at the paper's settings, with the label path's gradient scaled
    # to 0.01: the form that kept its labels alive and tied the default in label quality
    # (benchmarks/results/label_mechanism). Its step costs more than the default's (the
    # label generator's backward), so `bestrq_cost_long` is not its equal-compute arm.
    "birq_long_paper": Arm(
        "BiRQ at the paper's settings, label_grad_scale 0.01, 3x pretraining steps",
        [*PAPER_OVERRIDES, f"{ENH}.label_grad_scale=0.01"],
        pretrain_scale=3.0,
    ),
    "bestrq_cost_paper": Arm(
        "BEST-RQ, equal compute to `birq_long_paper`",
        ["model.arch=bestrq_tiny"],
        equal_cost=True,
        cost_of=("birq_long_paper", "bestrq_long"),
        pretrain_scale=3.0,
    ),
    # The second labelled size: about an hour (6x the budget's 10 minutes) for the 1200-step
    # encoders, fine-tuned for 2x the steps (about as many epochs of the subset as 10 minutes
    # get in 300 steps / 6, enough to converge on dev without the 10-minute regime's overfit).
    **{
        f"{source}_1h": Arm(
            f"{ARM_TITLES_1H[source]}, 1 h labelled",
            None,
            encoder_of=source if source != "scratch" else None,
            labelled_minutes=60.0,
            finetune_scale=2.0,
        )
        for source in ("scratch", "bestrq_long", "birq_long", "birq_long_paper")
    },
    "birq_masked": Arm("BiRQ, label_input: masked", [f"{ENH}.label_input=masked"]),
    # Named when label_grad's values were spelled st / stop (committed results use the names).
    "birq_st": Arm("BiRQ, label_grad: straight_through", [f"{ENH}.label_grad=straight_through"]),
    # Making pretraining pay: one knob of the fine-tuning recipe each, a BEST-RQ arm against
    # the no-pretraining arm fine-tuned with the same recipe.
    "bestrq_freeze": Arm(
        "BEST-RQ, encoder frozen for the first 50 fine-tuning steps",
        None,
        finetune=("pretrained.freeze_encoder_for_n_steps=50",),
        encoder_of="bestrq",
        baseline="scratch",
    ),
    "scratch_lr5e-4": Arm(
        "no pretraining, fine-tuning lr 5e-4",
        None,
        finetune=("optimizer.config.lr=5e-4",),
        baseline="scratch",
    ),
    "bestrq_lr5e-4": Arm(
        "BEST-RQ, fine-tuning lr 5e-4",
        None,
        finetune=("optimizer.config.lr=5e-4",),
        encoder_of="bestrq",
        baseline="scratch_lr5e-4",
    ),
}
ARM_GROUPS = {
    "comparison": "scratch,bestrq,birq,bestrq_cost",
    "long": "scratch,bestrq_long,birq_long,bestrq_cost_long",
    "probes": "bestrq_freeze,scratch_lr5e-4,bestrq_lr5e-4",
    "paper": "bestrq_long,birq_long_paper,bestrq_cost_paper,birq_long",
    "curve": "scratch,bestrq,birq,bestrq_cost,bestrq_long,birq_long,bestrq_cost_long,"
    "bestrq_9x,birq_9x,bestrq_cost_9x",
    "hour": "scratch_1h,bestrq_long_1h,birq_long_1h,birq_long_paper_1h",
}
"""Sets of arms `--arms` takes by name (each can run as its own runner on one work folder)."""
DEFAULT_ARMS = "comparison,long"
COMPARISONS = [
    ("bestrq", "scratch"), ("birq", "scratch"), ("birq", "bestrq"), ("birq", "bestrq_cost"),
    ("bestrq_long", "scratch"), ("birq_long", "scratch"), ("birq_long", "bestrq_long"),
    ("birq_long", "bestrq_cost_long"), ("birq_9x", "bestrq_9x"), ("birq_9x", "bestrq_cost_9x"),
    ("bestrq_9x", "scratch"), ("birq_9x", "scratch"), ("birq_long_ln", "birq_long"),
    ("birq_long_ln_centred", "birq_long"), ("birq_long_ln", "birq_long_ln_centred"),
    ("birq_masked", "birq"), ("birq_st", "birq"),
    ("birq_long_paper", "birq_long"), ("birq_long_paper", "bestrq_long"),
    ("birq_long_paper", "bestrq_cost_paper"),
    ("bestrq_long_1h", "scratch_1h"), ("birq_long_1h", "scratch_1h"),
    ("birq_long_1h", "bestrq_long_1h"), ("birq_long_paper_1h", "bestrq_long_1h"),
    ("birq_long_paper_1h", "birq_long_1h"),
    *((name, arm.baseline) for name, arm in ARMS.items() if arm.probe),
]  # fmt: skip
"""(arm, baseline): reported when both have runs; the difference is arm - baseline."""
CURVES = {
    "BEST-RQ": ("bestrq", "bestrq_long", "bestrq_9x"),
    "BiRQ (defaults)": ("birq", "birq_long", "birq_9x"),
    "BEST-RQ, equal compute": ("bestrq_cost", "bestrq_cost_long", "bestrq_cost_9x"),
    "BiRQ, paper + label_grad_scale 0.01": ("birq_long_paper",),
}
"""The compute curve's lines: the same method at growing pretraining lengths."""
CURVE_STEP_COST = {
    "BEST-RQ": "bestrq", "BiRQ (defaults)": "birq", "BEST-RQ, equal compute": "bestrq",
    "BiRQ, paper + label_grad_scale 0.01": "birq_long_paper",
}  # fmt: skip
"""Whose measured step cost prices a line's steps: "bestrq" and "birq" from the plan's
equal_cost (the side-by-side benchmark), another form from its equal_cost_of entry."""


def step_seconds(kind: str, meta: dict) -> float | None:
    """The plan's measured seconds per pretraining step of `kind` (CURVE_STEP_COST's
    values), on one footing: the side-by-side BEST-RQ step; None when not measured."""
    side = meta.get("equal_cost")
    if side is None:
        return None
    if kind in ("bestrq", "birq"):
        return side[f"{kind}_s_per_step"]
    form = meta.get("equal_cost_of", {}).get(kind)
    return None if form is None else form["ratio"] * side["bestrq_s_per_step"]


@dataclass(frozen=True)
class Layout:
    """The corpus and its split names."""

    corpus: Path
    train: str
    dev: str
    test: str


def cost_matched(steps: int, ratio: float) -> int:
    """BEST-RQ steps that cost what `steps` BiRQ steps cost (never fewer than `steps`)."""
    return max(steps, round(steps * ratio))


def arm_cost(arm: str, meta: dict) -> dict | None:
    """The step-cost measurement an equal-compute arm reads from the plan (plan.json)."""
    cost_of = ARMS[arm].cost_of
    return (
        meta.get("equal_cost") if cost_of is None else meta.get("equal_cost_of", {}).get(cost_of[0])
    )


def arm_pretrain_steps(arm: str, budget: Budget, meta: dict) -> int:
    spec = ARMS[arm]
    steps = round(budget.pretrain_steps * spec.pretrain_scale)
    return cost_matched(steps, arm_cost(arm, meta)["ratio"]) if spec.equal_cost else steps
