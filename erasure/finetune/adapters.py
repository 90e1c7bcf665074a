"""Trainable LoRA adapters attached to a frozen network by forward hooks, and which maps get them.

An adapter on a linear map ``y = W x + b`` adds ``scale * up @ (down @ x)``::

    y' = W x + b + up (down x)        up: [out, r] (zero at start), down: [r, d]          (4)

so at step 0 the adapted network equals the frozen one, and the trained change is exactly the low-rank
update ``W' = W + up @ down`` of :class:`erasure.delta.LowRankUpdate`: fine-tuning yields the same
``Delta`` type as the closed form. The network's own tensors are never written: hooks only add to a
module's output, can be switched off to run the frozen network (:meth:`LoraAdapters.disabled`), and are
removed when the ``attached`` context ends.

Parameter sets (named after ESD's variants):

* ``"xattn"``     -- every linear map inside cross-attention (``attn2``; ESD-x);
* ``"kv"``        -- only the text-reading ``attn2.to_k`` / ``attn2.to_v`` (the closed form's sites);
* ``"non_xattn"`` -- every linear map outside cross-attention (ESD-u);
* ``"all"``       -- every linear map.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..delta import Delta, LowRankUpdate

ParameterSet = Literal["xattn", "kv", "non_xattn", "all"]
PARAMETER_SETS: tuple[ParameterSet, ...] = ("xattn", "kv", "non_xattn", "all")
_XATTN = re.compile(r"(^|\.)attn2\.")
_KV = re.compile(r"(^|\.)attn2\.to_[kv]$")
DOWN_INIT_GAIN = 1.0
"""``down`` starts as ``N(0, gain^2 / d)`` rows (unit-variance projections); ``up`` starts at zero."""


class AdapterError(ValueError):
    """No map to adapt, or a warm start that does not fit the network."""


def select_linear(root: nn.Module, parameter_set: ParameterSet) -> list[str]:
    """Names (relative to ``root``, sorted) of the ``nn.Linear`` maps in ``parameter_set``."""
    if parameter_set not in PARAMETER_SETS:
        raise AdapterError(f"unknown parameter set {parameter_set!r}; choose one of {', '.join(PARAMETER_SETS)}")
    keep: Callable[[str], bool] = {
        "xattn": lambda n: bool(_XATTN.search(n)),
        "kv": lambda n: bool(_KV.search(n)),
        "non_xattn": lambda n: not _XATTN.search(n),
        "all": lambda n: True,
    }[parameter_set]
    names = sorted(n for n, m in root.named_modules() if isinstance(m, nn.Linear) and n and keep(n))
    if not names:
        raise AdapterError(f"the denoiser has no linear map in parameter set '{parameter_set}'")
    return names


class LoraAdapters(nn.Module):
    """Per adapted map ``up [out, r]`` and ``down [r, d]`` parameters (float32), eq. (4).

    ``init`` (a closed-form :class:`Delta`) warm-starts the maps it names: their factors become the first
    columns/rows of ``up``/``down`` (trainable), followed by ``rank`` fresh components.
    """

    def __init__(
        self,
        root: nn.Module,
        names: Sequence[str],
        rank: int,
        generator: torch.Generator,
        init: Delta | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise AdapterError(f"rank must be >= 1 (got {rank})")
        modules = dict(root.named_modules())
        warm = dict(init.updates) if init is not None else {}
        unknown = sorted(set(warm) - set(modules))
        if unknown:
            raise AdapterError(f"the warm-start edit names maps this denoiser lacks: {', '.join(unknown[:3])}")
        self.names = sorted(set(names) | set(warm))
        self.ups = nn.ParameterList()
        self.downs = nn.ParameterList()
        for name in self.names:
            module = modules[name]
            if not isinstance(module, nn.Linear):
                raise AdapterError(f"'{name}' is a {type(module).__name__}, not a linear map")
            out, d = module.out_features, module.in_features
            down = torch.randn(rank, d, generator=generator) * (DOWN_INIT_GAIN / math.sqrt(d))
            up = torch.zeros(out, rank)
            if name in warm:
                u = warm[name]
                if tuple(u.up.shape[:1]) + tuple(u.down.shape[1:]) != (out, d):
                    raise AdapterError(f"warm start for '{name}' is {u.up.shape[0]}x{u.down.shape[1]}, the map is {out}x{d}")
                up = torch.cat([u.up.float().cpu(), up], dim=1)
                down = torch.cat([u.down.float().cpu(), down], dim=0)
            self.ups.append(nn.Parameter(up))
            self.downs.append(nn.Parameter(down))
        self._enabled = True

    def delta(self, metadata: Mapping[str, str] | None = None) -> Delta:
        """The trained change as a :class:`Delta` (detached float32 CPU copies)."""
        updates = {
            n: LowRankUpdate(u.detach().float().cpu().clone(), d.detach().float().cpu().clone())
            for n, u, d in zip(self.names, self.ups, self.downs)
        }
        return Delta(updates, dict(metadata or {}))

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the frozen network: hooks stay registered but add nothing."""
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    @contextlib.contextmanager
    def attached(self, root: nn.Module) -> Iterator[LoraAdapters]:
        """Register the hooks on ``root``'s maps for the duration of the block (always removed)."""
        modules = dict(root.named_modules())
        handles = []
        try:
            for i, name in enumerate(self.names):
                handles.append(modules[name].register_forward_hook(self._hook(i)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, i: int) -> Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor | None]:
        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not self._enabled:
                return None
            x = inputs[0]
            down, up = self.downs[i], self.ups[i]
            low = nn.functional.linear(x.to(down.dtype) if not torch.is_autocast_enabled() else x, down.to(x.device))
            return output + nn.functional.linear(low, up.to(x.device)).to(output.dtype)

        return hook


@contextlib.contextmanager
def gradient_checkpointing(root: nn.Module, class_names: Sequence[str]) -> Iterator[int]:
    """Recompute the activations of every submodule whose class is named in ``class_names`` during the
    backward pass instead of storing them (non-reentrant ``torch.utils.checkpoint``). Yields how many
    modules were wrapped; their ``forward`` is restored afterwards. Pays off when activations dominate
    memory (SD-sized UNets on large latents); on the toy world it only costs time.
    """
    wrapped: list[nn.Module] = []
    try:
        for module in root.modules():
            if type(module).__name__ in class_names and "forward" not in module.__dict__:
                original = module.forward

                def forward(*args: object, _f: Callable = original, **kwargs: object) -> object:
                    if not torch.is_grad_enabled():
                        return _f(*args, **kwargs)
                    return checkpoint(_f, *args, use_reentrant=False, **kwargs)

                module.forward = forward  # instance attribute shadows the class method
                wrapped.append(module)
        yield len(wrapped)
    finally:
        for module in wrapped:
            del module.forward
