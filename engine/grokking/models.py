"""The small models that grok: a transformer without LayerNorm on tokens [a, b, =] (Nanda et al. 2023,
arXiv 2301.05217) and an MLP on the concatenated one-hot codes of a and b (Prieto et al. 2025,
arXiv 2501.04697), with the helpers that read and evaluate them."""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.grokking.config import GrokConfig
from engine.grokking.llm import build_llm


class Block(nn.Module):
    """Residual attention + ReLU MLP block without LayerNorm (as in Nanda et al. 2023)."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.n_heads = n_heads
        self.W_Q = nn.Linear(d_model, d_model, bias=False)
        self.W_K = nn.Linear(d_model, d_model, bias=False)
        self.W_V = nn.Linear(d_model, d_model, bias=False)
        self.W_O = nn.Linear(d_model, d_model, bias=False)
        self.W_in = nn.Linear(d_model, d_mlp)
        self.W_out = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n, T, d_model] -> [n, T, d_model] (causal attention over the T = 3 positions)."""
        n, t, d = x.shape
        h = self.n_heads

        def split(z: torch.Tensor) -> torch.Tensor:  # [n, T, d] -> [n, H, T, d / H]
            return z.view(n, t, h, d // h).transpose(1, 2)

        attn = nn.functional.scaled_dot_product_attention(
            split(self.W_Q(x)), split(self.W_K(x)), split(self.W_V(x)), is_causal=True
        )
        x = x + self.W_O(attn.transpose(1, 2).reshape(n, t, d))
        return x + self.W_out(torch.relu(self.W_in(x)))


class GrokTransformer(nn.Module):
    """Tokens [a, b, =] (vocabulary p + 1), learned position embeddings, blocks, unembedding at '='."""

    def __init__(self, p: int, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512, n_layers: int = 1):
        super().__init__()
        self.p = p
        self.embed = nn.Embedding(p + 1, d_model)
        self.pos = nn.Parameter(torch.randn(3, d_model) / math.sqrt(d_model))
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_mlp) for _ in range(n_layers))
        self.unembed = nn.Linear(d_model, p, bias=False)

    def forward(self, x: torch.Tensor, acts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """x: int64 [n, 2] -> logits [n, p]; with `acts`, each block's output [n, 3, d_model] is stored."""
        tokens = torch.cat([x, torch.full_like(x[:, :1], self.p)], dim=1)
        h = self.embed(tokens) + self.pos
        for i, block in enumerate(self.blocks):
            h = block(h)
            if acts is not None:
                acts[f"block{i}.resid_out"] = h.detach()
        return self.unembed(h[:, -1])


class GrokMLP(nn.Module):
    """MLP on concat(one_hot(a), one_hot(b)) (2p inputs), n_layers ReLU hidden layers, p logits."""

    def __init__(self, p: int, width: int = 256, n_layers: int = 1):
        super().__init__()
        self.p = p
        sizes = [2 * p] + [width] * n_layers
        self.hidden = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(width, p)

    def forward(self, x: torch.Tensor, acts: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """x: int64 [n, 2] -> logits [n, p]; with `acts`, each hidden layer's pre-ReLU [n, width] is stored."""
        h = torch.cat([nn.functional.one_hot(x[:, 0], self.p), nn.functional.one_hot(x[:, 1], self.p)], dim=1).float()
        for i, layer in enumerate(self.hidden):
            z = layer(h)
            if acts is not None:  # pre-ReLU, like a residual stream: post-ReLU medians are mostly 0
                acts[f"hidden{i}.pre_relu"] = z.detach()
            h = torch.relu(z)
        return self.out(h)


def build_model(config: GrokConfig) -> nn.Module:
    """A freshly initialised model, seeded by config.seed (same seed -> same initial weights); "llm" is
    the LLM-shaped Llama of engine.grokking.llm (called like the others: x [n, 2] -> logits [n, p])."""
    torch.manual_seed(config.seed)
    if config.model == "llm":
        return build_llm(
            config.p,
            config.task,
            n_layers=config.n_layers,
            d_model=config.d_model,
            n_heads=config.n_heads,
            d_mlp=config.d_mlp,
            seed=config.seed,
            context=config.context,
            seq_len=config.seq_len,
            filler=config.filler,
            filler_vocab=config.filler_vocab,
        )
    if config.model == "mlp":
        return GrokMLP(config.p, config.mlp_width, config.n_layers)
    return GrokTransformer(config.p, config.d_model, config.n_heads, config.d_mlp, config.n_layers)


def weight_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's 2-D weight matrices by parameter name (biases and vectors left out)."""
    return {name: param for name, param in model.named_parameters() if param.ndim == 2}


def weight_norm(model: nn.Module) -> float:
    """L2 norm of all parameters, sqrt(sum_i w_i^2)."""
    with torch.no_grad():
        return float(torch.sqrt(sum((param.double() ** 2).sum() for param in model.parameters())).item())


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of the model on (x [n, 2], y [n]), in chunks."""
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), chunk):
        logits = model(x[start : start + chunk])
        target = y[start : start + chunk]
        loss_sum += nn.functional.cross_entropy(logits.float(), target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
    return loss_sum / len(y), correct / len(y)
