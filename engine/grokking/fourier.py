"""Key Fourier frequencies of the number embedding: the mechanistic progress measure of grokking.

Nanda et al. 2023 ("Progress measures for grokking via mechanistic interpretability", arXiv 2301.05217)
show that a network that groks modular addition embeds the number a through cos(w_k a) and sin(w_k a)
for a handful of "key" frequencies w_k = 2 pi k / p, and that the embedding becomes sparse in the
Fourier basis over a as the generalising circuit forms (a memorising network's embedding is spread
over all frequencies).

Measure. E [p, D] = the embedding rows of the number tokens 0..p-1. In the orthonormal Fourier basis
over a (the constant vector, and for k = 1..floor(p/2) the unit vectors c_k[a] ~ cos(2 pi k a / p),
s_k[a] ~ sin(2 pi k a / p); only c_k at k = p/2 for even p), the norm of frequency k is

    norm_k = sqrt(||c_k^T E||^2 + ||s_k^T E||^2)        (summed over the D embedding channels),

computed with a real FFT along a. By Parseval, sum_k norm_k^2 = ||E - mean_a E||_F^2: the norms split
the embedding's (centred) squared norm, its "energy", between frequencies.

Rule for the key frequencies: sort the frequencies by norm, largest first, and take the shortest
prefix whose squared norms add up to at least `share` (default KEY_SHARE = 0.9) of the total energy of
frequencies 1..floor(p/2) (the constant term, the mean embedding, is left out). The count of that set
is the measure: about share x floor(p/2) minus a few for a random embedding (energy spread evenly), a
handful for a grokked one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.core.errors import LabError

KEY_SHARE = 0.9  # the key frequencies carry at least this share of the non-constant squared norm


@dataclass
class FourierResult:
    """Frequency norms of an embedding and its key frequencies (frequencies k are 1..floor(p/2))."""

    p: int
    norms: np.ndarray  # [floor(p/2)]: norm of frequency k = 1..floor(p/2) at index k - 1
    constant_norm: float  # norm of the constant component (sqrt(p) x |mean embedding|)
    key: list[int]  # the key frequencies, largest norm first
    key_norms: list[float]  # their norms, same order
    share: float  # the share of the energy the rule asked for
    covered: float  # share of the energy the key frequencies carry (NaN for an all-constant embedding)

    @property
    def n_key(self) -> int:
        return len(self.key)

    @property
    def n_frequencies(self) -> int:
        return len(self.norms)

    def to_json(self) -> dict:
        return {
            "p": self.p,
            "n_key": self.n_key,
            "key": self.key,
            "key_norms": self.key_norms,
            "share": self.share,
            "covered": self.covered,
            "constant_norm": self.constant_norm,
            "norms": [float(v) for v in self.norms],
        }


def frequency_norms(embedding: torch.Tensor | np.ndarray) -> tuple[np.ndarray, float]:
    """(norm_k for k = 1..floor(p/2) [floor(p/2)], norm of the constant term) of an embedding [p, D].

    Norms in the orthonormal Fourier basis over the p rows (see the module docstring), via numpy's rfft.
    """
    e = embedding.detach().float().cpu().numpy() if isinstance(embedding, torch.Tensor) else np.asarray(embedding)
    e = e.astype(np.float64)
    if e.ndim != 2 or e.shape[0] < 2:
        raise LabError(f"The Fourier measure needs an embedding of shape [p, D] with p >= 2 (got {e.shape}).")
    p = e.shape[0]
    spectrum = np.fft.rfft(e, axis=0)  # [floor(p/2) + 1, D]; F_k = sum_a e[a] exp(-2 pi i k a / p)
    power = (np.abs(spectrum) ** 2).sum(axis=1)  # sum over channels of |F_k|^2
    weights = np.full(len(power), 2.0 / p)  # cos and sin parts of k and p - k
    weights[0] = 1.0 / p
    if p % 2 == 0:
        weights[-1] = 1.0 / p  # the Nyquist frequency has no sine part
    energy = power * weights
    return np.sqrt(energy[1:]), float(np.sqrt(energy[0]))


def key_frequencies(embedding: torch.Tensor | np.ndarray, share: float = KEY_SHARE) -> FourierResult:
    """The key frequencies of an embedding [p, D] of the numbers 0..p-1: the fewest frequencies whose
    squared norms carry >= `share` of the non-constant squared norm (largest first), with their norms."""
    if not 0 < share <= 1:
        raise LabError(f"The share of the Fourier norm must be in (0, 1] (got {share}).")
    norms, constant = frequency_norms(embedding)
    p = int(embedding.shape[0])
    energy = norms**2
    total = float(energy.sum())
    if total <= 0:
        return FourierResult(p, norms, constant, [], [], share, float("nan"))
    order = np.argsort(-energy, kind="stable")
    cumulative = np.cumsum(energy[order]) / total
    count = int(np.searchsorted(cumulative, share * (1 - 1e-12))) + 1  # tolerance for float rounding
    chosen = order[:count]
    return FourierResult(
        p=p,
        norms=norms,
        constant_norm=constant,
        key=[int(k) + 1 for k in chosen],
        key_norms=[float(norms[k]) for k in chosen],
        share=share,
        covered=float(cumulative[count - 1]),
    )


def number_embedding(model: torch.nn.Module, p: int | None = None) -> torch.Tensor:
    """The input-embedding rows [p, D] of the number tokens 0..p-1 of a grokking model.

    Works for the LLM-shaped model (`engine.grokking.llm.GrokLlama`, or its bare transformers model,
    numbers are token ids 0..p-1) and the lab's small transformer (`embed`, rows 0..p-1).
    """
    p = p if p is not None else getattr(model, "p", None) or getattr(getattr(model, "config", None), "grok_p", None)
    if p is None:
        raise LabError("number_embedding needs p for a model that does not carry it.")
    inner = getattr(model, "lm", model)
    if hasattr(inner, "get_input_embeddings"):
        table = inner.get_input_embeddings().weight
    elif isinstance(getattr(model, "embed", None), torch.nn.Embedding):
        table = model.embed.weight
    else:
        raise LabError(f"{type(model).__name__} has no token embedding (the one-hot MLP has none to measure).")
    return table.detach()[:p]


def embedding_key_frequencies(model: torch.nn.Module, share: float = KEY_SHARE) -> FourierResult:
    """key_frequencies of a grokking model's number embedding (see `number_embedding`)."""
    return key_frequencies(number_embedding(model), share)
