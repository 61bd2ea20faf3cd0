"""Activations read with forward hooks, in one place: hooks put on, and always taken off.

    with capture(lm, "down_proj") as acts:      # each layer's MLP down projection
        run_body(lm, ids)
    acts[3]          # layer 3's output in that forward pass, detached: [B, T, D]

    with capture(lm, "layer", inputs=True) as acts:   # each decoder layer: the residual stream after it
        ...
    acts.inputs[3]   # the layer's first positional input, [B, T, D]

With a `LoadedModel` the model's lock is held for the whole block (hooks and other users of the
shared model never interleave; the lock is reentrant). Every hook is removed on leaving the block,
also when the forward pass raises. `hooked(modules, make_hook)` is the same guarantee for hooks that
do something else (change the output, keep a running maximum).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from engine.core.model import LoadedModel

Site = Literal["down_proj", "layer"]
SITES: dict[str, str] = {
    "down_proj": "the MLP down projection of each decoder layer (input [B, T, F], output [B, T, D])",
    "layer": "each decoder layer (output: the residual stream after the layer, [B, T, D])",
}
# A forward hook: (module, positional inputs, output) -> None, or a replacement output.
Hook = Callable[[Any, tuple, Any], Any]


def _model(target: LoadedModel | Any) -> Any:
    """The torch module of a LoadedModel, or the module itself."""
    return target.model if isinstance(target, LoadedModel) else target


def site_modules(target: LoadedModel | Any, site: Site | Sequence[Any]) -> list[Any]:
    """The modules of `site`, in layer order: a named site (SITES) of the model's architecture
    (engine.core.architecture), or the modules given."""
    from engine.core.architecture import decoder_layers, down_projections
    from engine.core.errors import LabError

    if not isinstance(site, str):
        return list(site)
    model = _model(target)
    if site == "down_proj":
        return down_projections(model)
    if site == "layer":
        return list(decoder_layers(model))
    raise LabError(f"Unknown capture site {site!r}: choose one of {', '.join(SITES)}.")


def _tensor(value: Any) -> Any:
    """A module's output as one tensor: the first element of a tuple (decoder layers return tuples)."""
    return value[0] if isinstance(value, (tuple, list)) else value


@contextlib.contextmanager
def hooked(target: LoadedModel | Any, modules: Sequence[Any], make_hook: Callable[[int], Hook]) -> Iterator[None]:
    """`make_hook(i)` as a forward hook on `modules[i]` for the block; all removed on exit, also on an
    error. `target` is the LoadedModel whose lock is held meanwhile (or a bare module: no lock)."""
    with target.lock if isinstance(target, LoadedModel) else contextlib.nullcontext():
        handles = []
        try:
            for i, module in enumerate(modules):
                handles.append(module.register_forward_hook(make_hook(i)))
            yield
        finally:
            for handle in handles:
                handle.remove()


class Activations(dict):
    """layer index -> the captured output of the last forward pass (detached, as computed: same dtype
    and device); `inputs` the same for the first positional input when captured."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[int, Any] = {}

    def stacked(self) -> Any:
        """Every layer's output as one tensor [L, ...] (layers in order; all must have been captured)."""
        import torch

        return torch.stack([self[i] for i in sorted(self)])


@contextlib.contextmanager
def capture(
    target: LoadedModel | Any,
    site: Site | Sequence[Any] = "down_proj",
    *,
    inputs: bool = False,
    on_call: Callable[[int, Any, Any], None] | None = None,
) -> Iterator[Activations]:
    """Capture what each module of `site` outputs (and, with `inputs=True`, its first positional input)
    during the forward passes run inside the block.

    `target`: a LoadedModel (its lock is held for the block) or a torch module. `site`: "down_proj",
    "layer" (see SITES) or a list of modules. Each forward pass overwrites the previous one's tensors;
    `on_call(i, input, output)` instead of keeping them sees every call (a running statistic over many
    prompts without holding them all). Tensors are detached; the caller converts (`.float()`) as needed.
    """
    modules = site_modules(target, site)
    acts = Activations()

    def make(i: int) -> Hook:
        def hook(module: Any, args: tuple, output: Any) -> None:
            y = _tensor(output).detach()
            x = args[0].detach() if args else None
            if on_call is not None:
                on_call(i, x, y)
                return
            acts[i] = y
            if inputs:
                acts.inputs[i] = x

        return hook

    with hooked(target, modules, make):
        yield acts
