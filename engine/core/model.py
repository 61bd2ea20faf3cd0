"""The loaded-model interface every feature takes: `LoadedModel` (model, tokenizer, device, lock).

Tensor shapes in docstrings: B batch, T tokens, D hidden size, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from engine.core.architecture import text_config
from engine.core.queue import FairLock

Quantization = Literal["none", "8bit", "4bit"]
QUANTIZATIONS: tuple[Quantization, ...] = ("none", "8bit", "4bit")


@dataclasses.dataclass
class LoadedModel:
    """A loaded model with what every page needs beside it.

    `lock` serialises use of the model: concurrent sessions of the lab demo share one copy, and
    hooks, in-place ablations and generation must never interleave. Hold it with `with lm.lock:`
    around any forward pass or weight edit. It is the one place that serialises model use: a fair
    queue over people (engine.core.queue.FairLock), reentrant like an RLock.
    """

    name: str
    model: Any
    tokenizer: Any
    processor: Any | None
    device: str
    dtype: str
    quantization: Quantization
    is_vlm: bool
    source: str
    load_seconds: float
    lock: FairLock = dataclasses.field(default_factory=FairLock, repr=False)

    @property
    def is_instruction_tuned(self) -> bool:
        """True when the tokenizer has a chat template (then pages use it for prompts)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_text(self, content: str) -> str:
        """A user message as prompt text: inside the chat template (with the generation prompt) when the
        tokenizer has one, else the text itself."""
        if not self.is_instruction_tuned:
            return content
        messages = [{"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt_inputs(self, content: str) -> Any:
        """Tokenized `chat_text(content)` (input_ids, attention_mask; [1, T] tensors on the CPU). The
        tokenizer adds its special tokens (BOS) only outside a chat template, which already holds them."""
        return self.tokenizer(
            self.chat_text(content), return_tensors="pt", add_special_tokens=not self.is_instruction_tuned
        )

    @property
    def pad_id(self) -> int:
        """The id padded batches use: the tokenizer's pad token, else its EOS, else 0 (always masked out)."""
        for value in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                return value
        return 0

    def left_padded(self, sequences: list[list[int]]) -> tuple[Any, Any]:
        """Token-id lists as one left-padded batch: (ids, attention mask) [N, width] on the model's device,
        every sequence ending at the last column (so the last position is each one's next-token slot)."""
        import torch

        width = max(len(seq) for seq in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, seq in enumerate(sequences):
            ids[i, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[i, width - len(seq) :] = 1
        return ids.to(self.device), mask.to(self.device)

    @property
    def text_config(self) -> Any:
        return text_config(self.model)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> str:
        quant = "" if self.quantization == "none" else f", {self.quantization}"
        kind = "vision-language" if self.is_vlm else "causal LM"
        n = self.n_params
        size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
        return f"{self.name}: {kind}, {size} params, {self.device}, {self.dtype}{quant}"
