"""An LLM-shaped grokking model: a small Llama decoder trained from scratch on [BOS, a, op, b, =] -> c (the
plain context), or on the same example inside a Markov filler sequence (the markov context,
engine.grokking.contexts).

Built from transformers' own `LlamaConfig` / `LlamaForCausalLM` (RMSNorm pre-norm, gated SiLU MLP with
gate/up/down projections, rotary position embeddings, untied input/output embeddings), so everything
super weights live in and come with in a pretrained LLM is there: a residual stream normalised before
each block, a `mlp.down_proj` per layer, a BOS token at position 0 and softmax attention that can sink
onto it. The tokenizer is a word-level `tokenizers` model wrapped as a `PreTrainedTokenizerFast`:

    vocabulary: "0" .. "p-1" (ids 0 .. p-1, so the answer c is also its own token id), the operation
    symbols of OP_TOKENS, "=", then "<bos>", "<eos>", "<pad>", "<unk>";
    "3 + 5 =" encodes to [<bos>, 3, +, 5, =] (BOS added by the tokenizer's post-processor);
    the markov context with filler_vocab="symbols" appends the filler symbols "f0" .. "f7"
    (engine.grokking.contexts); with "numbers" (the default) its filler is number tokens.

A checkpoint is an ordinary Hugging Face folder (`save_pretrained` of model and tokenizer; p and the
task are kept in config.json as `grok_p` / `grok_task`, the context as `grok_context` / `grok_seq_len` /
`grok_seed`), so `engine.core.loading.load_model(folder)`
opens it like any local model and the super-weight scan of the first tab
(`engine.superweights.detect.scan/detect`) runs on it unchanged. `as_loaded_model` gives the same
`LoadedModel` view of a model in memory (no disk round trip) for the measures of each checkpoint.

Shapes: N examples, T positions (plain: 5 = BOS, a, op, b, =; markov: seq_len), D = d_model, p answers.
The model has exactly T positions (max_position_embeddings); a longer sequence is refused.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.core.capture import capture
from engine.core.errors import LabError
from engine.core.model import LoadedModel
from engine.grokking import contexts
from engine.grokking.tasks import make_dataset

OP_TOKENS: dict[str, str] = {"add": "+", "sub": "-", "mul": "*", "div": "/", "sq_sum": "sq+", "cube_ab": "cube+"}
EQ_TOKEN = "="
BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN = "<bos>", "<eos>", "<pad>", "<unk>"
SEQ_LEN = 5  # plain context: [BOS, a, op, b, =]
POSITION_NAMES = ("bos", "a", "op", "b", "eq")  # of the plain context
EQ_POSITION = 4
MIN_LAYERS = 1
FILLER_PREFIX = "f"


# ---------------------------------------------------------------------------------------------
# Vocabulary and tokenizer


def vocabulary(p: int, filler: bool = False) -> dict[str, int]:
    """Token -> id: numbers 0..p-1 first (id = value), then the op symbols, "=", BOS, EOS, pad, unk, and with
    `filler` (the markov context) the filler symbols f0 .. f7."""
    tokens = [str(i) for i in range(p)] + list(OP_TOKENS.values()) + [EQ_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]
    tokens.append(UNK_TOKEN)
    if filler:
        tokens += [f"{FILLER_PREFIX}{i}" for i in range(contexts.FILLER_SYMBOLS)]
    return {token: i for i, token in enumerate(tokens)}


def build_tokenizer(p: int, filler: bool = False) -> Any:
    """A word-level PreTrainedTokenizerFast over `vocabulary(p, filler)`: whitespace-split words, BOS prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary(p, filler)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN
    )


def prompt_text(a: int, b: int, task: str = "add") -> str:
    """The text of one example without its answer, e.g. "3 + 5 =" (the tokenizer adds BOS)."""
    return f"{a} {_op_token(task)} {b} {EQ_TOKEN}"


def _op_token(task: str) -> str:
    if task not in OP_TOKENS:
        raise LabError(f"Unknown task {task!r}; choose one of {', '.join(OP_TOKENS)}.")
    return OP_TOKENS[task]


def sequences(x: torch.Tensor, p: int, task: str = "add") -> torch.Tensor:
    """Token ids [N, 5] = [BOS, a, op, b, =] of the pairs x [N, 2] (int64 a, b in 0..p-1)."""
    vocab = vocabulary(p)
    n = x.shape[0]
    ids = torch.empty((n, SEQ_LEN), dtype=torch.long, device=x.device)
    ids[:, 0] = vocab[BOS_TOKEN]
    ids[:, 1] = x[:, 0]
    ids[:, 2] = vocab[_op_token(task)]
    ids[:, 3] = x[:, 1]
    ids[:, 4] = vocab[EQ_TOKEN]
    return ids


# ---------------------------------------------------------------------------------------------
# Data: the split of the existing grokking dataset


@dataclass
class LlmData:
    """The grokking split as token sequences. ids_*: int64 [N, T]; y_*: int64 [N] (c, also its token id);
    x_*: int64 [N, 2] (a, b), the pairs of the existing dataset in the same order; pos_*: int64 [N], the
    position of "=" (whose logits predict c): T - 1 in the plain context. The markov context's sequences are
    the fixed ones of each pair (contexts.context_table)."""

    ids_train: torch.Tensor
    y_train: torch.Tensor
    ids_test: torch.Tensor
    y_test: torch.Tensor
    x_train: torch.Tensor
    x_test: torch.Tensor
    p: int
    task: str
    pos_train: torch.Tensor | None = None
    pos_test: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            ids = getattr(self, f"ids_{split}")
            if getattr(self, f"pos_{split}") is None:
                setattr(self, f"pos_{split}", torch.full((len(ids),), ids.shape[1] - 1, dtype=torch.long))

    @property
    def seq_len(self) -> int:
        return int(self.ids_train.shape[1])

    def triples(self, split: str = "train") -> torch.Tensor:
        """(a, b, c) rows [N, 3] of one split ("train" or "test")."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        return torch.cat([x, y[:, None]], dim=1)

    def prompts(self, n: int = 4, split: str = "train") -> list[str]:
        """The texts of the first n sequences of a split without BOS (plain: "a op b ="), e.g. as prompts of the
        super-weight scan."""
        ids = self.ids_train if split == "train" else self.ids_test
        words = {i: w for w, i in vocabulary(self.p, self.seq_len != SEQ_LEN).items()}
        return [" ".join(words[int(i)] for i in row[1:]) for row in ids[:n].tolist()]

    def to(self, device: str | torch.device) -> LlmData:
        """The same data with every tensor on `device`."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


def llm_data(config: Any = None, *, task: str = "add", p: int = 53, train_frac: float = 0.3, seed: int = 0) -> LlmData:
    """The train/test split of the existing grokking dataset for (task, p, train_frac, seed), as sequences.

    `config` is any object with those four attributes (a GrokConfig); without it the keyword values are used.
    The pairs and their order come from the grokking lab's own `make_dataset` (same seeded permutation).
    """
    if config is None:
        config = types.SimpleNamespace(task=task, p=p, train_frac=train_frac, seed=seed)
    _op_token(config.task)
    data = make_dataset(config)
    if getattr(config, "context", "plain") == "markov":
        ids, pos = markov_table(config.p, config.task, config.seq_len, config.seed, config.filler_vocab)
        tr = data.x_train[:, 0] * config.p + data.x_train[:, 1]
        te = data.x_test[:, 0] * config.p + data.x_test[:, 1]
        return LlmData(
            ids[tr],
            data.y_train,
            ids[te],
            data.y_test,
            data.x_train,
            data.x_test,
            config.p,
            config.task,
            pos[tr],
            pos[te],
        )
    return LlmData(
        sequences(data.x_train, config.p, config.task),
        data.y_train,
        sequences(data.x_test, config.p, config.task),
        data.y_test,
        data.x_train,
        data.x_test,
        config.p,
        config.task,
    )


def filler_source(p: int, filler_vocab: str) -> tuple[int, int]:
    """(first token id, number of symbols) of the markov filler: the p numbers (ids 0 .. p-1), or f0 .. f7."""
    if filler_vocab == "numbers":
        return 0, p
    return vocabulary(p, filler=True)[f"{FILLER_PREFIX}0"], contexts.FILLER_SYMBOLS


def markov_table(
    p: int, task: str, seq_len: int, seed: int, filler_vocab: str = "numbers"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed markov context of every pair: (ids [p * p, T], "=" position [p * p]), row a * p + b."""
    vocab = vocabulary(p)
    first, k = filler_source(p, filler_vocab)
    return contexts.context_table(
        p, task, seq_len, seed, vocab[BOS_TOKEN], vocab[_op_token(task)], vocab[EQ_TOKEN], first, k
    )


# ---------------------------------------------------------------------------------------------
# Model


def llm_config(
    p: int,
    task: str = "add",
    n_layers: int = 4,
    d_model: int = 64,
    n_heads: int = 4,
    d_mlp: int = 256,
    init_std: float = 0.02,
    attn_implementation: str = "eager",
    context: str = "plain",
    seq_len: int = SEQ_LEN,
    seed: int = 0,
    filler_vocab: str = "numbers",
) -> Any:
    """The LlamaConfig of the grokking model (p, task and context kept as `grok_p`, `grok_task`, `grok_context`,
    `grok_seq_len`, `grok_seed`), with exactly as many positions as the context's sequences have.

    Refuses (LabError) fewer than MIN_LAYERS layers, a d_model not divisible by n_heads, an odd head size
    (RoPE rotates pairs of channels) and a markov sequence too short for BOS, the example and a filler token.
    """
    from transformers import LlamaConfig

    _op_token(task)
    if n_layers < MIN_LAYERS:
        raise LabError(f"The LLM-shaped model needs at least {MIN_LAYERS} layer (got {n_layers}).")
    if context == "markov" and seq_len < contexts.EXPRESSION_LEN + 2:
        raise LabError(
            f"A markov sequence needs >= {contexts.EXPRESSION_LEN + 2} tokens (BOS, 'a op b = c', a filler token); "
            f"got {seq_len}."
        )
    if n_heads < 1 or d_model % n_heads or (d_model // n_heads) % 2:
        raise LabError(f"d_model ({d_model}) must split into {n_heads} heads of an even size (RoPE).")
    if d_mlp < 1 or p < 2:
        raise LabError("d_mlp must be >= 1 and p >= 2.")
    vocab = vocabulary(p, context == "markov" and filler_vocab == "symbols")
    return LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        max_position_embeddings=seq_len if context == "markov" else SEQ_LEN,
        initializer_range=init_std,
        tie_word_embeddings=False,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[PAD_TOKEN],
        attn_implementation=attn_implementation,
        grok_p=p,
        grok_task=task,
        grok_context=context,
        grok_seq_len=seq_len if context == "markov" else SEQ_LEN,
        grok_seed=seed,
        grok_filler_vocab=filler_vocab,
    )


class GrokLlama(nn.Module):
    """The grokking model: `lm` (a LlamaForCausalLM) + its tokenizer, called like the lab's other models.

    forward(x [N, 2] int64 pairs (a, b)) -> logits [N, p] at the "=" position over the p answer tokens,
    so `engine.grokking` evaluate/training code that calls model(x) works unchanged (markov context: each
    pair in its fixed context). `acts`, when given, receives the residual stream after each decoder layer,
    "layer{i}.resid_out" [N, T, D]. `train_loss` is the training objective of either context.
    """

    def __init__(
        self,
        lm: Any,
        tokenizer: Any,
        p: int,
        task: str = "add",
        context: str = "plain",
        seed: int = 0,
        filler: str = "resampled",
        filler_vocab: str | None = None,
    ):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.p = p
        self.task = task
        self.context = context
        self.seed = seed
        self.filler = filler
        self.filler_vocab = filler_vocab or getattr(lm.config, "grok_filler_vocab", "numbers")
        self.seq_len = int(getattr(lm.config, "grok_seq_len", SEQ_LEN)) if context == "markov" else SEQ_LEN
        if self.seq_len > lm.config.max_position_embeddings:
            raise LabError(
                f"Sequences of {self.seq_len} tokens do not fit this model's {lm.config.max_position_embeddings} "
                "positions: train a model for this context."
            )

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def sequences_of(self, x: torch.Tensor, step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [N, T], "=" position [N]) of the pairs x [N, 2]: plain [BOS, a, op, b, =]; markov: each pair's
        fixed context, or (step given, resampled filler) a fresh context drawn for that training step."""
        device = self.lm.device
        if self.context != "markov":
            ids = sequences(x.to(device), self.p, self.task)
            return ids, torch.full((len(x),), SEQ_LEN - 1, dtype=torch.long, device=device)
        if step is not None and self.filler == "resampled":
            vocab = vocabulary(self.p)
            from engine.grokking.tasks import OPERATIONS

            x = x.cpu()
            c = OPERATIONS[self.task](x[:, 0], x[:, 1], self.p)
            first, k = filler_source(self.p, self.filler_vocab)
            ids, pos = contexts.markov_sequences(
                x,
                c,
                self.seq_len,
                vocab[BOS_TOKEN],
                vocab[_op_token(self.task)],
                vocab[EQ_TOKEN],
                first,
                contexts.step_generator(self.seed, step),
                k,
            )
            return ids.to(device), pos.to(device)
        ids, pos = markov_table(self.p, self.task, self.seq_len, self.seed, self.filler_vocab)
        rows = (x[:, 0] * self.p + x[:, 1]).cpu()
        return ids[rows].to(device), pos[rows].to(device)

    def train_loss(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, answer logits [N, p]) of a training batch: plain, cross-entropy of the answer; markov,
        next-token cross-entropy averaged over every position of every sequence (the answer's included) plus
        the answer's cross-entropy over the p numbers (so that the task is not drowned by T - 2 filler targets)."""
        if self.context != "markov":
            logits = self(x)
            return nn.functional.cross_entropy(logits, y), logits
        ids, pos = self.sequences_of(x, step)
        logits = self.lm(input_ids=ids, use_cache=False).logits  # [N, T, V]
        lm_loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        answer = logits[torch.arange(len(pos), device=pos.device), pos, : self.p]
        return lm_loss + nn.functional.cross_entropy(answer, y.to(answer.device)), answer

    def forward(self, x: torch.Tensor, acts: dict | None = None) -> torch.Tensor:
        ids, pos = self.sequences_of(x)
        if acts is None:
            return answer_logits(self.lm, ids, self.p, pos)

        with capture(self.lm, list(self.lm.model.layers)) as resid:  # layer i -> [N, T, D]
            logits = answer_logits(self.lm, ids, self.p, pos)
        acts.update({f"layer{i}.resid_out": h for i, h in sorted(resid.items())})
        return logits

    def save_pretrained(self, folder: str | Path) -> Path:
        return save_checkpoint(self, folder)


def build_llm(
    p: int,
    task: str = "add",
    *,
    n_layers: int = 4,
    d_model: int = 64,
    n_heads: int = 4,
    d_mlp: int = 256,
    seed: int = 0,
    init_std: float = 0.02,
    context: str = "plain",
    seq_len: int = SEQ_LEN,
    filler: str = "resampled",
    filler_vocab: str = "numbers",
) -> GrokLlama:
    """A freshly initialised LLM-shaped grokking model (same seed -> same initial weights), float32, CPU."""
    from transformers import LlamaForCausalLM

    config = llm_config(
        p,
        task,
        n_layers,
        d_model,
        n_heads,
        d_mlp,
        init_std,
        context=context,
        seq_len=seq_len,
        seed=seed,
        filler_vocab=filler_vocab,
    )
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(config).float()
    symbols = context == "markov" and filler_vocab == "symbols"
    return GrokLlama(lm, build_tokenizer(p, symbols), p, task, context, seed, filler, filler_vocab)


def answer_logits(lm: Any, ids: torch.Tensor, p: int, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [N, p] at the "=" position restricted to the number tokens 0..p-1: the last of ids [N, T], or
    positions [N] when given."""
    ids = ids.to(lm.device)
    if positions is None or bool((positions == ids.shape[1] - 1).all()):
        out = lm(input_ids=ids, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1, :p]
    logits = lm(input_ids=ids, use_cache=False).logits  # [N, T, V]
    return logits[torch.arange(len(ids), device=logits.device), positions.to(logits.device), :p]


@torch.no_grad()
def evaluate_ids(
    lm: Any, ids: torch.Tensor, y: torch.Tensor, p: int, chunk: int = 4096, positions: torch.Tensor | None = None
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the answers y [N] from sequences ids [N, T] ("=" at positions [N], default
    the last), in chunks."""
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), chunk):
        pos = None if positions is None else positions[start : start + chunk]
        logits = answer_logits(lm, ids[start : start + chunk], p, pos).float()
        target = y[start : start + chunk].to(logits.device)
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
    return loss_sum / len(y), correct / len(y)


# ---------------------------------------------------------------------------------------------
# Checkpoints as Hugging Face folders


def save_checkpoint(model: GrokLlama, folder: str | Path) -> Path:
    """Write model and tokenizer with save_pretrained (config.json, model.safetensors, tokenizer files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.lm.save_pretrained(str(folder))
    model.tokenizer.save_pretrained(str(folder))
    return folder


def load_checkpoint(folder: str | Path, device: str = "cpu") -> GrokLlama:
    """A checkpoint folder back as a GrokLlama (float32, eval mode); LabError when it is not one."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise LabError(f"{folder} is not a checkpoint folder (no config.json).")
    try:
        lm = LlamaForCausalLM.from_pretrained(str(folder), attn_implementation="eager", dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise LabError(f"Cannot load the grokking checkpoint {folder}: {str(err).splitlines()[0]}") from err
    p, task = getattr(lm.config, "grok_p", None), getattr(lm.config, "grok_task", "add")
    if p is None:
        raise LabError(f"{folder} holds a Llama model but not a grokking one (no grok_p in its config).")
    context, seed = getattr(lm.config, "grok_context", "plain"), int(getattr(lm.config, "grok_seed", 0))
    return GrokLlama(lm.to(device).eval(), tokenizer, int(p), task, context, seed)


def as_loaded_model(model: GrokLlama | Any, tokenizer: Any = None, name: str = "grokking-llm") -> LoadedModel:
    """The lab's LoadedModel view of a model in memory (shares its weights), for scan/detect/edited_weights."""
    lm = model.lm if isinstance(model, GrokLlama) else model
    tokenizer = tokenizer or (model.tokenizer if isinstance(model, GrokLlama) else None)
    if tokenizer is None:
        raise LabError("as_loaded_model needs the tokenizer of a bare transformers model.")
    dtype = str(next(lm.parameters()).dtype).replace("torch.", "")
    return LoadedModel(
        name=name,
        model=lm,
        tokenizer=tokenizer,
        processor=None,
        device=str(lm.device),
        dtype=dtype,
        quantization="none",
        is_vlm=False,
        source="memory",
        load_seconds=0.0,
    )
