"""In-place weight edits that are always undone: element edits and whole-tensor replacements, each
restored bit-for-bit on exit (checked with `torch.equal`) under the model's lock.

A shared model is never left altered: a failed restore raises `RestoreError`. Weights are addressed
as [out, in] views (`engine.core.architecture.out_in_weight`), so an edit writes through to the
parameter whatever the family's stored layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import torch

from engine.core.architecture import down_weight
from engine.core.errors import LabError
from engine.core.model import LoadedModel

FULL_CHECK_BYTES = 256 * 2**20  # whole-matrix torch.equal check when the touched matrices fit in this


class RestoreError(RuntimeError):
    """The weights could not be restored bit-for-bit (the shared model would be left altered)."""


def weights_edit_problem(lm: LoadedModel) -> str | None:
    """Why the weights of this model cannot be edited in place (None when they can)."""
    if getattr(lm, "quantization", "none") != "none":
        return (
            f"The model is loaded {lm.quantization} (bitsandbytes). The scan and detection work (hooks read "
            "activations), but a quantized weight is packed with its block's scale: zeroing or scaling one "
            "scalar would rewrite the block and cannot be restored bit-for-bit, and its value/rank are not "
            "those of the original weight. Load the model in bf16/fp32 to ablate or quantize."
        )
    return None


@dataclasses.dataclass
class ElementEdit:
    """Set weight[rows, cols] = values on a [out, in] weight view (writes through to the parameter)."""

    weight: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor

    @classmethod
    def at(cls, model, layer: int, row: int, col: int, value: float) -> ElementEdit:
        w = down_weight(model, layer)
        idx = torch.tensor([row], device=w.device), torch.tensor([col], device=w.device)
        return cls(w, *idx, torch.tensor([value], dtype=w.dtype, device=w.device))

    @classmethod
    def zero(cls, model, layer: int, row: int, col: int) -> ElementEdit:
        return cls.at(model, layer, row, col, 0.0)

    @classmethod
    def scaled(cls, model, layer: int, row: int, col: int, scale: float) -> ElementEdit:
        w = down_weight(model, layer)
        return cls.at(model, layer, row, col, float(w[row, col].item()) * scale)


def check_editable(lm: LoadedModel) -> None:
    """LabError when the weights cannot be edited in place (a quantized model)."""
    problem = weights_edit_problem(lm)
    if problem:
        raise LabError(problem)


@contextlib.contextmanager
def edited_weights(
    lm: LoadedModel, edits: Sequence[ElementEdit], full_check_bytes: int = FULL_CHECK_BYTES
) -> Iterator[None]:
    """Apply element edits in place under `lm.lock`; restore and verify bit-for-bit on exit.

    The touched elements are always compared with `torch.equal`; whole matrices too when their
    snapshots fit in `full_check_bytes` (they do for every single-weight ablation).
    """
    check_editable(lm)
    with lm.lock, torch.no_grad():
        saved = [e.weight[e.rows, e.cols].clone() for e in edits]
        unique = {e.weight.untyped_storage().data_ptr(): e.weight for e in edits}
        size = sum(w.numel() * w.element_size() for w in unique.values())
        snapshots = {k: w.clone() for k, w in unique.items()} if size <= full_check_bytes else {}
        try:
            for e in edits:
                e.weight[e.rows, e.cols] = e.values.to(e.weight.dtype)
            yield
        finally:
            for e, old in zip(reversed(edits), reversed(saved)):
                e.weight[e.rows, e.cols] = old
            ok = all(torch.equal(e.weight[e.rows, e.cols], old) for e, old in zip(edits, saved))
            ok = ok and all(torch.equal(unique[k], snap) for k, snap in snapshots.items())
            if not ok:
                raise RestoreError("The ablated weights were not restored bit-for-bit: reload the model.")


@contextlib.contextmanager
def replaced_weights(lm: LoadedModel, replacements: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Overwrite whole weight tensors in place (e.g. quantized copies); restore and verify on exit.

    The originals are kept on the CPU; the check is `torch.equal` on every replaced tensor.
    """
    check_editable(lm)
    with lm.lock, torch.no_grad():
        saved = [target.to("cpu", copy=True) for target, _ in replacements]
        try:
            for target, new in replacements:
                target.copy_(new)
            yield
        finally:
            for (target, _), old in zip(replacements, saved):
                target.copy_(old)
            if not all(torch.equal(target.cpu(), old) for (target, _), old in zip(replacements, saved)):
                raise RestoreError("The quantized weights were not restored bit-for-bit: reload the model.")
