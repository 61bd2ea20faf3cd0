"""What determines a grokking run, and the checks made before anything is allocated (no torch here:
`python -m engine grok --help` derives its flags from these dataclasses and must stay instant).

Task: predict c = (a o b) mod p from (a, b) for every pair (Power et al. 2022, arXiv 2201.02177);
a random `train_frac` of the p^2 pairs is the training set, the rest the test set. Models: a small
transformer without LayerNorm (Nanda et al. 2023, arXiv 2301.05217), an MLP on the concatenated
one-hot codes of a and b (Prieto et al. 2025, arXiv 2501.04697), or an LLM-shaped Llama decoder on
[BOS, a, op, b, =] or on the same example inside Markov filler (context="markov", engine.grokking.contexts; a
task where attention must sometimes do nothing). Optimiser: AdamW, optionally with linear warmup, gradient
clipping and the Grokfast EMA gradient filter (Lee et al. 2024, arXiv 2405.20233), optionally with super-weight
suppression (clipping each down projection, engine.grokking.suppression) or zeroing of the tracked super-weight
candidate (engine.grokking.zeroing).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, KeysView, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from engine.core.errors import FieldError, LabError
from engine.core.options import option
from engine.core.runstore import run_id_for

Task = Literal["add", "sub", "mul", "div", "sq_sum", "cube_ab"]
ModelKind = Literal["mlp", "transformer", "llm"]
# llm only: "plain" = [BOS, a, op, b, =] -> c; "markov" = BOS + Markov filler with "a op b = c" at a random
# position, next-token loss everywhere (engine.grokking.contexts)
Context = Literal["plain", "markov"]
Filler = Literal["resampled", "fixed"]  # markov filler: drawn anew every step, or one fixed context per pair
FillerVocab = Literal["numbers", "symbols"]  # markov filler: the number tokens, or 8 symbols of its own
ZeroWeight = Literal["off", "tracked", "random"]  # engine.grokking.zeroing
Measure = Literal["super_weight", "max_over_median", "kurtosis", "top_coordinate", "massive_activation"]

TASK_LABELS: dict[str, str] = {
    "add": "(a + b) mod p",
    "sub": "(a - b) mod p",
    "mul": "(a * b) mod p",
    "div": "(a / b) mod p, b != 0",
    "sq_sum": "(a^2 + b^2) mod p",
    "cube_ab": "(a^3 + a*b) mod p",
}
INVERSE_TASKS = frozenset({"div"})  # tasks that need b^-1 mod p: b != 0 only, and p prime
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
MEASURES: tuple[str, ...] = get_args(Measure)
MODEL_LABELS: dict[str, str] = {
    "mlp": "one-hot MLP",
    "transformer": "transformer (no LayerNorm)",
    "llm": "LLM-shaped (Llama)",
}
MEASURE_LABELS: dict[str, str] = {
    "super_weight": "super weight (causal)",
    "max_over_median": "max/median |w|",
    "kurtosis": "weight kurtosis",
    "top_coordinate": "stable top coordinate",
    "massive_activation": "massive activation",
}


class _RegisteredMeasures(Mapping[str, str]):
    """name -> label of every onset measure of the LLM-shaped model, read from engine.grokking.measure_registry
    at each use (a measure registered later is in it; the registry, which imports pandas, loads when first read)."""

    @staticmethod
    def _labels() -> dict[str, str]:
        from engine.grokking.measure_registry import REGISTRY

        return {name: spec.label for name, spec in REGISTRY.items()}

    def __getitem__(self, name: str) -> str:
        return self._labels()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels())

    def __len__(self) -> int:
        return len(self._labels())


LLM_MEASURE_LABELS: Mapping[str, str] = _RegisteredMeasures()  # the registry's names and labels
LLM_MEASURES: KeysView[str] = LLM_MEASURE_LABELS.keys()  # the registry's names, in registration order

MEMORISATION_ACCURACY = 0.99  # train accuracy that marks memorisation
HALF_GROK_ACCURACY = 0.50  # test accuracy of the first grokking event
GROK_ACCURACY = 0.95  # test accuracy that marks grokking (and starts the stop_after_grok countdown)
# a run has grokked when test accuracy first reaches GROK_ACCURACY and stays there at every evaluation of the
# next GROK_HOLD_STEPS steps (fewer when stop_after_grok is smaller: the window is stated in every summary)
GROK_HOLD_STEPS = 200

FORMAT_VERSION = 1  # part of every run id: a new layout of the run folder gives new ids
RUN_ID_DIGITS = 16  # hex digits of a run id (cache/grokking/<run id>/)
MAX_LAYERS = 4  # MLP / transformer
LLM_MIN_LAYERS, LLM_MAX_LAYERS = 1, 8  # with < 4 layers the detector's relative rule (layer vs median) rarely fires
LLM_MIN_SEQ_LEN, LLM_MAX_SEQ_LEN = 7, 128  # markov context: BOS + "a op b = c" + >= 1 filler token; positions
# the one-click preset of the LLM-shaped model (page and CLI --model llm defaults for these fields): stable
# training (plain AdamW, linear warmup, gradient clipping; Grokfast off, it drives loss spikes), checked by
# benchmarks/bench_grokking.py to grok and hold to the end
LLM_PRESET: dict[str, Any] = {
    "model": "llm",
    "n_layers": 4,
    "d_model": 64,
    "n_heads": 4,
    "d_mlp": 256,
    "lr": 1e-3,
    "grokfast": False,
    "warmup_steps": 50,
    "grad_clip": 1.0,
}
# the LLM-shaped model on the task that needs a sink (the study's control arm, config.StudyConfig)
SINK_TASK_PRESET: dict[str, Any] = {
    **LLM_PRESET,
    "n_layers": 2,
    "d_model": 64,
    "d_mlp": 128,
    "lr": 1.5e-3,
    "p": 23,
    "context": "markov",
    "seq_len": 24,
    "batch_size": 128,
    "weight_decay": 1.0,
    "eval_every": 50,
    "checkpoint_every": 100,
    "stop_after_grok": 300,
}
# the page's grokking presets: name -> GrokConfig fields set by the preset (the rest keep their defaults)
PRESETS: dict[str, dict[str, Any]] = {
    "One-hot MLP (default)": {},
    "LLM-shaped, 5-token task (nothing forms)": dict(LLM_PRESET),
    "LLM-shaped, task that needs a sink (markov filler)": SINK_TASK_PRESET,
}
MAX_CHECKPOINTS = 60  # checkpoints a run keeps on disk (thinned evenly; step 0, events and the last kept)
# suppression of super weights during training (engine.grokking.suppression; checked here, without torch)
SUPPRESS_EVERY, SUPPRESS_QUANTILE, SUPPRESS_FACTOR = 10, 0.999, 1.0
MAX_CLIP_FRACTION = 0.01  # a suppression setting that would clip more of any matrix is refused
MAX_SWEEP_RUNS = 64  # runs in one sweep or study (LAB_GROK_MAX_SWEEP)
TRAIN_THREADS = 1  # torch threads while training: 1 is fastest for these tiny models (benchmarks/bench_grokking.py)
DEFAULT_MEMORY_LIMIT_GB = 6.0  # refuse configurations whose estimate exceeds this (LAB_GROK_MEMORY_GB)


@dataclass(frozen=True)
class GrokConfig:
    """Everything that determines a run: its id hashes these fields (add none without a new FORMAT_VERSION)."""

    task: Task = option("add", "(a o b) mod p task", flag="--op")
    p: int = option(53, "modulus p (prime for div)")
    train_frac: float = option(0.6, "fraction of all pairs used for training, in (0, 1)")
    seed: int = option(0, "seed of the train/test split, the initial weights and the minibatches")
    model: ModelKind = option(
        "mlp",
        "one-hot MLP (Prieto et al. 2025), transformer without LayerNorm (Nanda et al. 2023), or llm: an "
        f"LLM-shaped Llama decoder (RMSNorm, gated MLP, RoPE, BOS; --layers >= {LLM_MIN_LAYERS})",
    )
    n_layers: int = option(
        1,
        f"MLP hidden layers or transformer blocks (1-{MAX_LAYERS}); llm: decoder layers "
        f"({LLM_MIN_LAYERS}-{LLM_MAX_LAYERS})",
        flag="--layers",
    )
    d_model: int = option(128, "transformer / llm width")
    n_heads: int = option(4, "transformer / llm attention heads (dividing --d-model)", flag="--heads")
    d_mlp: int = option(512, "transformer / llm MLP width")
    mlp_width: int = option(256, "hidden width of the one-hot MLP")
    lr: float = option(3e-3, "AdamW learning rate")
    weight_decay: float = option(1.0, "AdamW weight decay")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.98, "AdamW beta2")
    batch_size: int = option(0, "minibatch size (0 = full batch)")
    steps: int = option(3000, "maximum training steps")
    eval_every: int = option(25, "steps between evaluations (one metrics row each)")
    checkpoint_every: int = option(100, "steps between checkpoints with all measures (a multiple of --eval-every)")
    grokfast: bool = option(True, "Grokfast EMA gradient filter g <- g + lamb * EMA_alpha(g); off: plain AdamW")
    grokfast_alpha: float = option(0.98, "Grokfast EMA decay alpha, in [0, 1)")
    grokfast_lamb: float = option(2.0, "Grokfast amplification lamb, >= 0")
    stop_after_grok: int = option(
        500, f"steps to go on once test accuracy first reaches {GROK_ACCURACY:g} (-1: train all steps)"
    )
    suppress: bool = option(
        False, "llm: suppress super weights: clip each down projection's |w| to c x its q-quantile every N steps"
    )
    suppress_every: int = option(SUPPRESS_EVERY, "suppression: clip every N steps")
    suppress_quantile: float = option(SUPPRESS_QUANTILE, "suppression: the quantile q of |w|, in (0, 1]")
    suppress_factor: float = option(SUPPRESS_FACTOR, "suppression: the factor c > 0 of the clip threshold")
    context: Context = option(
        "plain",
        "llm: plain = [BOS, a, op, b, =] -> c; markov = BOS + Markov filler with 'a op b = c' at a random position, "
        "next-token loss everywhere (a task where attention must sometimes do nothing)",
    )
    seq_len: int = option(28, f"llm markov context: tokens per sequence ({LLM_MIN_SEQ_LEN}-{LLM_MAX_SEQ_LEN})")
    filler: Filler = option("resampled", "llm markov context: filler drawn anew every step, or fixed per pair")
    filler_vocab: FillerVocab = option(
        "numbers", "llm markov context: filler over the number tokens, or over 8 filler symbols of its own"
    )
    warmup_steps: int = option(0, "linear learning-rate warmup over the first N steps (0: none)")
    grad_clip: float = option(0.0, "clip the gradient's global L2 norm to this (0: no clipping)")
    zero_weight: ZeroWeight = option(
        "off",
        "llm: every --zero-every steps zero the tracked super-weight candidate (tracked) or one random weight of "
        "its matrix (random)",
    )
    zero_every: int = option(10, "zeroing: every N steps")

    def key_fields(self, owner: str | None = None) -> dict[str, Any]:
        """What the run id hashes: {"v": FORMAT_VERSION, **fields} (config.json holds the fields alone).

        The suppression fields enter only when suppression is on, OPTIONAL_FIELDS only when they differ from
        their defaults, and {"owner": owner} only when an
        owner is given (a person's run on the server), so the ids of runs without them never change."""
        fields = dataclasses.asdict(self)
        if not self.suppress:
            for name in SUPPRESSION_FIELDS:
                fields.pop(name)
        for name in OPTIONAL_FIELDS:
            if fields[name] == _FIELD_DEFAULTS[name]:
                fields.pop(name)
        return {"v": FORMAT_VERSION, **fields, **({"owner": owner} if owner else {})}

    def key(self, owner: str | None = None) -> str:
        """The run id: first 16 hex digits of sha256 of the sorted JSON of `key_fields(owner)`."""
        return run_id_for(self.key_fields(owner), RUN_ID_DIGITS)

    def replace(self, **changes: Any) -> GrokConfig:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        model = {
            "transformer": f"transformer {self.n_layers}L d{self.d_model} {self.n_heads}h",
            "llm": f"Llama {self.n_layers}L d{self.d_model} {self.n_heads}h mlp{self.d_mlp}",
        }.get(self.model, f"MLP {self.n_layers}x{self.mlp_width}")
        if self.model == "llm" and self.context == "markov":
            model += f", markov context T={self.seq_len} ({self.filler} {self.filler_vocab} filler)"
        opt = f"AdamW lr {self.lr:g} wd {self.weight_decay:g}" + (" + Grokfast" if self.grokfast else "")
        if self.warmup_steps:
            opt += f" + warmup {self.warmup_steps}"
        if self.grad_clip:
            opt += f" + grad-norm clip {self.grad_clip:g}"
        if self.zero_weight != "off":
            opt += f" + zero {self.zero_weight} weight every {self.zero_every}"
        if self.suppress:
            opt += (
                f" + clip W_down to {self.suppress_factor:g} x q{self.suppress_quantile:g} every {self.suppress_every}"
            )
        return f"{TASK_LABELS[self.task]}, p={self.p}, train {self.train_frac:.0%}, seed {self.seed}, {model}, {opt}"

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> GrokConfig:
        """The config of a config.json (unknown keys ignored; TypeError/ValueError when it is not one)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k in names})


SUPPRESSION_FIELDS = ("suppress", "suppress_every", "suppress_quantile", "suppress_factor")
# fields added after runs were first stored: part of a run id only when not at their default (old ids stay)
OPTIONAL_FIELDS = (
    "context",
    "seq_len",
    "filler",
    "filler_vocab",
    "warmup_steps",
    "grad_clip",
    "zero_weight",
    "zero_every",
)
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GrokConfig)}


def sequence_length(config: GrokConfig) -> int:
    """Tokens per sequence of an llm run: 5 ([BOS, a, op, b, =]) or seq_len (markov context)."""
    return config.seq_len if config.context == "markov" else 5


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: every seed x weight decay of a base configuration, each run on its own."""

    seeds: tuple[int, ...] = option((0, 1, 2), "seeds")
    weight_decays: tuple[float, ...] = option((0.3, 1.0), "weight decays (0 usually does not grok: a contrast)")
    measure: Measure = option("super_weight", "onset measure to correlate with the grokking step")
    workers: int = option(
        1, "runs trained at once: 1 = one after another in this process (at --threads); N > 1 = a local pool of N "
        "processes, 1 torch thread each (as grok-study); --executor ray: Ray workers instead"
    )


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out (not part of its id)."""

    threads: int = option(TRAIN_THREADS, "torch CPU threads while training (1 is fastest for these tiny models)")
    out: str | None = option(
        None,
        "grok: the run's folder (default cache/grokking/<run id>/); "
        "grok-sweep: a folder with one sub-folder per run, named by run id",
    )


StudyArm = Literal["control", "zero_tracked", "zero_random", "nothing_forms"]
STUDY_ARMS: tuple[str, ...] = get_args(StudyArm)
ARM_LABELS: dict[str, str] = {
    "control": "(a) control: plain softmax, markov context",
    "zero_tracked": "(d) zero the tracked super-weight candidate",
    "zero_random": "(d') zero one random weight of the same matrix",
    "nothing_forms": "5-token task [BOS, a, +, b, =] (nothing forms)",
}


@dataclass(frozen=True)
class StudyConfig:
    """The grokking / super-weight study (`python -m engine grok-study`, `make study-grok`): the LLM-shaped model
    on the markov context (a task that needs a sink), arms x seeds on paired seeds (a seed fixes the split, the
    initial weights and the minibatches of all its arms): the control, targeted zeroing of the tracked
    super-weight candidate, zeroing a random weight of the same matrix, and the old 5-token task ("nothing
    forms") with the same model and training."""

    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4, 5), "seeds (each runs every arm)")
    arms: tuple[str, ...] = option(STUDY_ARMS, f"arms, of {', '.join(STUDY_ARMS)}")
    p: int = option(23, "modulus p")
    seq_len: int = option(24, "tokens per markov sequence")
    filler_vocab: FillerVocab = option("numbers", "markov filler over the number tokens or 8 symbols of its own")
    train_frac: float = option(0.6, "fraction of the pairs used for training")
    weight_decay: float = option(1.0, "AdamW weight decay")
    lr: float = option(1.5e-3, "AdamW learning rate")
    warmup_steps: int = option(50, "linear warmup steps")
    grad_clip: float = option(1.0, "gradient norm clip")
    batch_size: int = option(128, "minibatch size (sequences)")
    steps: int = option(3000, "step cap: a run that has not grokked by then is censored there")
    n_layers: int = option(2, "decoder layers", flag="--layers")
    d_model: int = option(64, "width")
    d_mlp: int = option(128, "MLP width")
    zero_every: int = option(10, "zeroing arms: zero a weight every N steps")
    eval_every: int = option(50, "steps between evaluations")
    checkpoint_every: int = option(100, "steps between checkpoints with all measures")
    stop_after_grok: int = option(300, "steps to go on after test accuracy first reaches 0.95 (>= the hold window)")
    workers: int = option(2, "worker processes (1 torch thread each)")
    report_dir: str = option("reports/grokking", "folder of the report (summary.md, figures)")
    report_only: bool = option(False, "write the report from the cached runs without training")
    root: str | None = option(None, "runs folder (default cache/grokking/)")

    def base(self) -> GrokConfig:
        """The control run's configuration of the study (seed set per run)."""
        return GrokConfig(
            **{
                **LLM_PRESET,
                "n_layers": self.n_layers,
                "d_model": self.d_model,
                "d_mlp": self.d_mlp,
                "lr": self.lr,
                "warmup_steps": self.warmup_steps,
                "grad_clip": self.grad_clip,
            },
            p=self.p,
            train_frac=self.train_frac,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            steps=self.steps,
            eval_every=self.eval_every,
            checkpoint_every=self.checkpoint_every,
            stop_after_grok=self.stop_after_grok,
            context="markov",
            seq_len=self.seq_len,
            filler_vocab=self.filler_vocab,
        )

    def config(self, arm: str, seed: int) -> GrokConfig:
        """The run of one arm and seed."""
        base = self.base().replace(seed=int(seed))
        if arm == "zero_tracked":
            return base.replace(zero_weight="tracked", zero_every=self.zero_every)
        if arm == "zero_random":
            return base.replace(zero_weight="random", zero_every=self.zero_every)
        if arm == "nothing_forms":
            return base.replace(context="plain")
        return base

    def runs(self) -> list[tuple[str, GrokConfig]]:
        """(arm, config) of every run, seed by seed."""
        return [(arm, self.config(arm, s)) for s in self.seeds for arm in self.arms]

    def configs(self) -> list[GrokConfig]:
        return [config for _, config in self.runs()]


def validate_study(study: StudyConfig) -> None:
    """Refuse unknown arms and a hold window the runs cannot observe, before any training."""
    unknown = [a for a in study.arms if a not in STUDY_ARMS]
    if unknown:
        raise LabError(f"Unknown arm(s) {', '.join(unknown)}; choose from {', '.join(STUDY_ARMS)}.")
    if not study.seeds:
        raise LabError("The study needs at least one seed.")
    if 0 <= study.stop_after_grok < GROK_HOLD_STEPS:
        raise LabError(
            f"stop_after_grok ({study.stop_after_grok}) must be >= the hold window ({GROK_HOLD_STEPS} steps) so that "
            "every run that reaches 95% can show whether it holds."
        )
    validate_sweep(len(study.configs()))
    for config in study.configs():
        validate(config)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(math.isqrt(n)) + 1))


def nearest_prime(p: int) -> int:
    """The prime >= 3 nearest to p, the smaller one on a tie (12 -> 11, 2000 -> 1999): the suggestion when a task
    needs a prime modulus; for p in [3, n] it is never above n when n is prime or n - 1 is."""
    for distance in range(p + 3):
        for q in (p - distance, p + distance):
            if q >= 3 and is_prime(q):
                return q
    raise AssertionError("unreachable: 3 is prime")


def n_pairs(config: GrokConfig) -> int:
    """Number of (a, b) pairs of the task: p^2, or p (p - 1) when b must be invertible."""
    return config.p * (config.p - 1) if config.task in INVERSE_TASKS else config.p**2


def estimate_memory_bytes(config: GrokConfig) -> int:
    """Rough peak memory of a run: data + parameters/optimiser state + activations of one batch.

    Activations (float32, kept for backward, x3 for gradients and temporaries) per example:
    transformer 3 positions x (d_model x 8 + d_mlp x 2 + heads x 3) per layer + logits;
    MLP 2p inputs + 2 x width per layer + logits. Evaluation runs in chunks, so the batch is the
    training batch (the whole training set when full batch).
    """
    p = config.p
    pairs = n_pairs(config)
    n_train = max(1, int(round(config.train_frac * pairs)))
    batch = n_train if config.batch_size <= 0 else min(config.batch_size, n_train)
    if config.model == "mlp":
        params = 2 * p * config.mlp_width + (config.n_layers - 1) * config.mlp_width**2 + config.mlp_width * p
        per_example = 2 * p + 2 * config.mlp_width * config.n_layers + 2 * p
    elif config.model == "llm":  # T positions; attention [H, T, T], gate/up/down and norms kept per layer
        d, vocab, t = config.d_model, p + 12 + 8, sequence_length(config)
        params = 2 * vocab * d + config.n_layers * (4 * d * d + 3 * d * config.d_mlp + 2 * d) + d
        per_example = t * config.n_layers * (12 * d + 4 * config.d_mlp + t * config.n_heads) + t * d + 2 * t * vocab
    else:
        d = config.d_model
        params = (p + 1) * d + 3 * d + config.n_layers * (4 * d * d + 2 * d * config.d_mlp) + d * p
        per_example = 3 * config.n_layers * (8 * d + 2 * config.d_mlp + 3 * config.n_heads) + 3 * d + 2 * p
    data = pairs * 3 * 8
    return int(data + params * 4 * 5 + batch * per_example * 4 * 3)


def validate(config: GrokConfig, memory_limit_gb: float | None = None) -> None:
    """Refuse a configuration with a one-line reason (LabError) before anything is allocated."""
    if config.task not in TASK_LABELS:
        raise LabError(f"Unknown task {config.task!r}; choose one of {', '.join(TASK_LABELS)}.")
    if config.model not in MODEL_KINDS:
        raise LabError(f"Unknown model {config.model!r}; choose one of {', '.join(MODEL_KINDS)}.")
    if not isinstance(config.p, int) or config.p < 3:
        raise FieldError("p", f"p must be an integer >= 3 (got {config.p}).")
    if config.task in INVERSE_TASKS and not is_prime(config.p):
        raise FieldError(
            "p",
            f"{TASK_LABELS[config.task]} needs every b != 0 to have an inverse mod p, which holds only for prime p; "
            f"{config.p} is not prime (try {nearest_prime(config.p)}).",
        )
    if not 0 < config.train_frac < 1:
        raise FieldError("train_frac", f"Train fraction must be strictly between 0 and 1 (got {config.train_frac}).")
    if not (config.lr > 0 and config.weight_decay >= 0 and 0 <= config.beta1 < 1 and 0 <= config.beta2 < 1):
        raise LabError("Need lr > 0, weight decay >= 0 and 0 <= beta1, beta2 < 1.")
    if config.steps < 1 or config.eval_every < 1 or config.checkpoint_every < 1:
        raise LabError("steps, eval_every and checkpoint_every must be positive.")
    if config.checkpoint_every % config.eval_every:
        raise LabError(
            f"checkpoint_every ({config.checkpoint_every}) must be a multiple of eval_every ({config.eval_every})."
        )
    if config.model == "llm":
        if config.n_layers not in range(LLM_MIN_LAYERS, LLM_MAX_LAYERS + 1):
            raise FieldError(
                "n_layers",
                f"The LLM-shaped model needs {LLM_MIN_LAYERS}-{LLM_MAX_LAYERS} layers (got {config.n_layers}).",
            )
        if config.context == "markov" and not LLM_MIN_SEQ_LEN <= config.seq_len <= LLM_MAX_SEQ_LEN:
            raise FieldError(
                "seq_len",
                f"A markov sequence of {config.seq_len} tokens does not fit: it needs BOS, 'a op b = c' and at least "
                f"one filler token ({LLM_MIN_SEQ_LEN}) and at most the model's {LLM_MAX_SEQ_LEN} positions."
            )
        if config.n_heads < 1 or config.d_model % config.n_heads or (config.d_model // config.n_heads) % 2:
            raise FieldError(
                "n_heads", f"d_model ({config.d_model}) must split into {config.n_heads} heads of an even size (RoPE)."
            )
        if config.d_mlp < 1:
            raise FieldError("d_mlp", "d_mlp must be >= 1.")
    elif (
        config.n_layers not in range(1, MAX_LAYERS + 1)
        or config.d_model < 4
        or config.n_heads < 1
        or config.d_model % config.n_heads
    ):
        field = "n_layers" if config.n_layers not in range(1, MAX_LAYERS + 1) else "n_heads"
        raise FieldError(field, f"Need 1-{MAX_LAYERS} layers and d_model divisible by the number of heads.")
    if config.model != "llm":
        for name, plain in (("context", "plain"), ("zero_weight", "off")):
            if getattr(config, name) != plain:
                raise FieldError(
                    name,
                    f"--{name.replace('_', '-')} {getattr(config, name)} needs the LLM-shaped model: use --model llm.",
                )
    if config.zero_weight != "off" and config.zero_every < 1:
        raise FieldError("zero_every", f"Zeroing must run every N >= 1 steps (got {config.zero_every}).")
    if config.warmup_steps < 0 or config.grad_clip < 0:
        raise LabError("warmup_steps and grad_clip must be >= 0 (0: off).")
    if config.suppress:
        if config.model != "llm":
            raise FieldError(
                "suppress", "Suppression clips the down projections of the LLM-shaped model: use --model llm."
            )
        validate_suppression(config.suppress_quantile, config.suppress_factor, config.suppress_every)
    if config.batch_size < 0:
        raise FieldError("batch_size", "Batch size must be >= 0 (0 = full batch).")
    if config.grokfast and not (0 <= config.grokfast_alpha < 1 and config.grokfast_lamb >= 0):
        raise LabError("Grokfast needs 0 <= alpha < 1 and lamb >= 0.")
    pairs = n_pairs(config)
    n_train = int(round(config.train_frac * pairs))
    if n_train < 1 or n_train >= pairs:
        raise FieldError(
            "train_frac", f"Train fraction {config.train_frac} leaves an empty train or test set for p={config.p}."
        )
    limit = (
        memory_limit_gb
        if memory_limit_gb is not None
        else float(os.environ.get("LAB_GROK_MEMORY_GB", DEFAULT_MEMORY_LIMIT_GB))
    )
    need = estimate_memory_bytes(config)
    if need > limit * 2**30:
        raise LabError(
            f"This configuration needs about {need / 2**30:.1f} GiB ({pairs:,} pairs for p={config.p}), "
            f"over the {limit:g} GiB limit: use a smaller p, a minibatch size, or raise LAB_GROK_MEMORY_GB."
        )


def validate_suppression(quantile: float, factor: float, every: int = SUPPRESS_EVERY) -> None:
    """LabError (one line) for a suppression setting that cannot be used, before any training starts:
    c <= 0 removes every weight; c <= 1 with q < 1 - MAX_CLIP_FRACTION clips over the limit."""
    if not 0 < quantile <= 1:
        raise FieldError("suppress_quantile", f"The suppression quantile q must be in (0, 1] (got {quantile}).")
    if not factor > 0:
        raise FieldError(
            "suppress_factor", f"The suppression factor c must be > 0 (got {factor}): c <= 0 would remove every weight."
        )
    if every < 1:
        raise FieldError("suppress_every", f"Suppression must run every N >= 1 steps (got {every}).")
    if factor <= 1 and 1 - quantile > MAX_CLIP_FRACTION + 1e-12:  # 1 - 0.99 is 0.010000000000000009
        raise FieldError(
            "suppress_quantile",
            f"q = {quantile:g} with c = {factor:g} clips about {1 - quantile:.1%} of each down projection, "
            f"over the {MAX_CLIP_FRACTION:.0%} limit: use q >= {1 - MAX_CLIP_FRACTION:g} or a larger c.",
        )


def validate_sweep(n_runs: int, limit: int | None = None) -> None:
    """Refuse a sweep of more than `limit` runs (default $LAB_GROK_MAX_SWEEP, else MAX_SWEEP_RUNS)."""
    limit = limit if limit is not None else int(os.environ.get("LAB_GROK_MAX_SWEEP", MAX_SWEEP_RUNS))
    if n_runs > limit:
        raise LabError(f"This sweep has {n_runs} runs, over the limit of {limit}: use fewer seeds or weight decays.")
