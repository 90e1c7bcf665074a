"""Saving and loading the committed toy-world weights (safetensors + a JSON sidecar with the config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig, WorldConfig, from_dict, to_dict

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODEL_FILE = "toy_model.safetensors"
DETECTOR_FILE = "detector.safetensors"


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_weights(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``state`` (contiguous CPU float32) and ``meta`` next to it as JSON; atomic per file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    tmp_json = path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tmp_json.replace(sidecar(path))


def load_meta(path: Path) -> dict[str, Any]:
    return json.loads(sidecar(path).read_text())


def load_state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def load_model(path: Path | None = None):  # noqa: ANN201 - avoids an import cycle in the annotation
    """The committed (or given) toy model, in eval mode, and its world config."""
    from .model import ToyModel

    path = path or WEIGHTS_DIR / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; train it with `python -m erasure.toyworld.train`")
    meta = load_meta(path)
    model = ToyModel(meta["vocab"], from_dict(ModelConfig, meta["model"]))
    model.load_state_dict(load_state(path))
    return model.eval(), from_dict(WorldConfig, meta["world"])


def config_meta(world: WorldConfig, model: ModelConfig, vocab: list[str]) -> dict[str, Any]:
    return {"world": to_dict(world), "model": to_dict(model), "vocab": vocab}
