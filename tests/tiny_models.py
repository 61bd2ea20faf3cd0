"""Tiny random models built from configs, saved as ordinary HF folders (no network, seconds each).

They exercise the "any HF id or local folder" path: `engine.core.loading.load_model(str(folder))`.
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "The capital of France is Paris. Summer is hot. Winter is cold.",
    "def add(a, b):\n    return a + b\n",
    "one, two, three, four, five, six, seven, eight, nine, ten",
    "Apple Inc. is a worldwide tech company. The cat sat on the mat.",
    "What is the capital of Italy? Rome. Who wrote Hamlet? Shakespeare.",
]


def build_tokenizer(vocab_size: int = 384, named_special: dict[str, str] | None = None):
    """A byte-level BPE tokenizer trained on a few sentences, with bos/eos/pad/unk tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] + list((named_special or {}).values())
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        **({"extra_special_tokens": dict(named_special)} if named_special else {}),
    )


def _save(model, tokenizer, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def tiny_gemma3_config(vocab_size: int, **overrides):
    from transformers import Gemma3TextConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    kwargs.update(overrides)
    return Gemma3TextConfig(**kwargs)


def build_tiny_gemma3(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Gemma 3 text model (one sliding, one global layer; 4 query heads on 2 KV heads)."""
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = Gemma3ForCausalLM(tiny_gemma3_config(len(tokenizer)))
    return _save(model, tokenizer, folder)


def build_tiny_llama(folder: Path, seed: int = 0, layers: int = 3) -> Path:
    """A tiny Llama: 3 layers, d=64, 4 heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return _save(LlamaForCausalLM(config), tokenizer, folder)


def build_tiny_gpt2(folder: Path, seed: int = 0) -> Path:
    """A tiny GPT-2 (Conv1D projections with transposed weights)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=2, eos_token_id=1
    )
    return _save(GPT2LMHeadModel(config), tokenizer, folder)


def build_tiny_gemma3_vlm(folder: Path, seed: int = 0) -> Path:
    """A tiny Gemma 3 vision-language model (Gemma3ForConditionalGeneration) with its processor."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        SiglipVisionConfig,
    )

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(
        named_special={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        }
    )
    boi, eoi, img = (
        tokenizer.convert_tokens_to_ids(t) for t in ("<start_of_image>", "<end_of_image>", "<image_soft_token>")
    )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    text = tiny_gemma3_config(len(tokenizer))
    config = Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=img,
    )
    model = Gemma3ForConditionalGeneration(config)
    image_processor = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder
