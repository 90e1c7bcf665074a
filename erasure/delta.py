"""Deltas: an edit as per-site low-rank factors; apply, invert, export and load.

A :class:`Delta` maps site names (module paths inside the denoiser) to ``up [out, r]`` and
``down [r, d]`` factors with ``W' = W + up @ down``. Since the closed-form update is exactly low rank
(``solve`` eq. 3), the LoRA export is exact up to float32 rounding. Files are safetensors only:

* ``comfy`` LoRA keys -- ``diffusion_model.<path>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha``;
* ``kohya`` LoRA keys -- ``lora_unet_<path with _>.lora_up.weight`` / ... / ``.alpha``;
* ``diff`` -- full ``diffusion_model.<path>.diff`` tensors (what ComfyUI calls a diff patch).

``alpha`` is written equal to the rank, so loaders that scale by ``alpha / rank`` apply a factor of 1.
Metadata (targets, anchors, retained set, method, parameters, engine version) goes into the
safetensors header as one JSON string under :data:`METADATA_KEY`: safetensors writes its metadata map
in hash order, so a single sorted entry is what makes equal erasures byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

KeyFormat = Literal["comfy", "kohya"]
KEY_FORMATS: tuple[KeyFormat, ...] = ("comfy", "kohya")
COMFY_PREFIX = "diffusion_model."
KOHYA_PREFIX = "lora_unet_"
STORE_DTYPE = torch.float32
METADATA_KEY = "care_erasure"


class DeltaError(ValueError):
    """A delta file or operation the user must fix (path, overwrite, shape, content)."""


@dataclass(frozen=True)
class LowRankUpdate:
    """``W' = W + up @ down``."""

    up: torch.Tensor  # [out, r]
    down: torch.Tensor  # [r, d]

    @property
    def rank(self) -> int:
        return int(self.up.shape[1])

    def dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return self.up.to(dtype) @ self.down.to(dtype)


@dataclass
class Delta:
    updates: dict[str, LowRankUpdate]
    metadata: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------------------ applying
    def apply(self, weights: Mapping[str, torch.Tensor], strength: float = 1.0) -> dict[str, torch.Tensor]:
        """New weights ``W + strength * up @ down`` for every edited site (computed in float32, cast
        back to each weight's dtype and device). ``weights`` is read only; missing sites raise."""
        out = {}
        for name, update in self.updates.items():
            if name not in weights:
                raise DeltaError(f"the model has no weight for edited site '{name}'; wrong model family?")
            w = weights[name]
            if tuple(w.shape) != (update.up.shape[0], update.down.shape[1]):
                raise DeltaError(
                    f"site '{name}': weight {tuple(w.shape)} does not match the delta "
                    f"{(update.up.shape[0], update.down.shape[1])}; the erasure was made for another model"
                )
            up = update.up.to(w.device, torch.float32)
            new = w.to(torch.float32) + strength * (up @ update.down.to(w.device, torch.float32))
            out[name] = new.to(w.dtype)
        return out

    def inverted(self) -> Delta:
        """The delta that undoes this one to first order: ``-up @ down`` (exactly, for an additive patch)."""
        return Delta({n: LowRankUpdate(-u.up, u.down) for n, u in self.updates.items()}, dict(self.metadata))

    # ------------------------------------------------------------------------------ exporting
    def lora_state_dict(self, key_format: KeyFormat = "comfy", prefix: str = COMFY_PREFIX) -> dict[str, torch.Tensor]:
        """LoRA tensors in the chosen key format (see module docstring), contiguous float32."""
        if key_format not in KEY_FORMATS:
            raise DeltaError(f"unknown LoRA key format {key_format!r}; choose one of {', '.join(KEY_FORMATS)}")
        tensors = {}
        for name, update in sorted(self.updates.items()):
            key = f"{prefix}{name}" if key_format == "comfy" else KOHYA_PREFIX + name.replace(".", "_")
            tensors[f"{key}.lora_up.weight"] = update.up.to(STORE_DTYPE).contiguous().cpu()
            tensors[f"{key}.lora_down.weight"] = update.down.to(STORE_DTYPE).contiguous().cpu()
            tensors[f"{key}.alpha"] = torch.tensor(float(update.rank), dtype=STORE_DTYPE)
        return tensors

    def diff_state_dict(self, prefix: str = COMFY_PREFIX) -> dict[str, torch.Tensor]:
        return {f"{prefix}{n}.diff": u.dense(STORE_DTYPE).contiguous().cpu() for n, u in sorted(self.updates.items())}

    def save_lora(self, path: str | os.PathLike, key_format: KeyFormat = "comfy", overwrite: bool = False) -> Path:
        metadata = self.metadata | {"format": f"lora-{key_format}"}
        return _save(self.lora_state_dict(key_format), metadata, path, overwrite)

    def save_diff(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        return _save(self.diff_state_dict(), self.metadata | {"format": "diff"}, path, overwrite)


def _save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | os.PathLike, overwrite: bool) -> Path:
    """Write atomically: a temporary file in the same folder, renamed over the target only when complete."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise DeltaError(f"'{path.name}': erasures are saved as .safetensors files")
    if path.exists() and not overwrite:
        raise DeltaError(f"'{path}' already exists; choose another name or allow overwriting")
    if not path.parent.is_dir():
        raise DeltaError(f"folder '{path.parent}' does not exist")
    if not os.access(path.parent, os.W_OK):
        raise DeltaError(f"folder '{path.parent}' is not writable")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        header = {METADATA_KEY: json.dumps({k: str(v) for k, v in metadata.items()}, sort_keys=True)}
        save_file(tensors, str(tmp), metadata=header)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_delta(path: str | os.PathLike, site_names: Iterable[str] = ()) -> Delta:
    """Read a delta written by :meth:`Delta.save_lora` or :meth:`Delta.save_diff` (any key format).

    Diff files come back as rank-``d`` updates (``down = I``) so every delta has one shape of API.
    Kohya keys replace the dots of module paths by ``_``; pass the model's ``site_names`` to map
    them back (unknown names are kept as written).
    """
    by_kohya_name = {n.replace(".", "_"): n for n in site_names}
    path = Path(path)
    if not path.is_file():
        raise DeltaError(f"no erasure file at '{path}'")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types
        raise DeltaError(f"'{path.name}' is not a readable safetensors file: {err}") from err
    metadata = json.loads(header.pop(METADATA_KEY, "{}")) | header
    updates: dict[str, LowRankUpdate] = {}
    for key, t in tensors.items():
        if key.endswith(".lora_up.weight"):
            base = key[: -len(".lora_up.weight")]
            down = tensors.get(f"{base}.lora_down.weight")
            if down is None:
                raise DeltaError(f"'{path.name}': {key} has no matching lora_down")
            alpha = tensors.get(f"{base}.alpha")
            scale = float(alpha) / t.shape[1] if alpha is not None else 1.0
            updates[_site_name(base, by_kohya_name)] = LowRankUpdate(t * scale, down)
        elif key.endswith(".diff"):
            base = key[: -len(".diff")]
            updates[_site_name(base, by_kohya_name)] = LowRankUpdate(t, torch.eye(t.shape[1], dtype=t.dtype))
    if not updates:
        raise DeltaError(f"'{path.name}' holds no LoRA or diff tensors")
    for name, u in updates.items():
        if not (torch.isfinite(u.up).all() and torch.isfinite(u.down).all()):
            raise DeltaError(f"'{path.name}': site '{name}' has non-finite values; the file is damaged")
    return Delta(updates, metadata)


def _site_name(base: str, by_kohya_name: Mapping[str, str]) -> str:
    if base.startswith(COMFY_PREFIX):
        return base[len(COMFY_PREFIX) :]
    if base.startswith(KOHYA_PREFIX):
        flat = base[len(KOHYA_PREFIX) :]
        return by_kohya_name.get(flat, flat)
    return base


def metadata_json(value: object) -> str:
    """Metadata values are strings: JSON for structured ones, sorted keys for byte-stable files."""
    return json.dumps(value, sort_keys=True)
