"""Where an erasure LoRA is written: a name the user typed -> a path inside the first ``loras`` folder.

Pure path logic (no ComfyUI import), so it is unit-tested on its own. A name may hold sub-folders
(``care/boat``); it may not leave the folder (``..``, absolute paths, drive letters, links pointing out).
"""

from __future__ import annotations

import os
from pathlib import Path

EXTENSION = ".safetensors"


class LoraPathError(ValueError):
    """A LoRA file name the user must change."""


def lora_target(folder: str | os.PathLike, name: str, overwrite: bool = False) -> tuple[Path, str]:
    """``(absolute path, name as the LoRA loaders list it)`` for ``name`` inside ``folder``.

    Adds ``.safetensors`` when missing; refuses other extensions, empty names, names escaping the folder,
    and existing files unless ``overwrite``. Creates missing sub-folders inside ``folder``.
    """
    raw = (name or "").strip()
    if not raw:
        raise LoraPathError("the LoRA file name is empty; type a name such as 'care_erasure'")
    if "\x00" in raw:
        raise LoraPathError("the LoRA file name contains a NUL character")
    rel = raw.replace("\\", "/")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":") or os.path.isabs(raw):
        raise LoraPathError(f"'{raw}' is an absolute path; give a name relative to the loras folder")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or not parts:
        raise LoraPathError(f"'{raw}' leaves the loras folder; use a plain name or sub-folder/name")
    suffix = Path(parts[-1]).suffix.lower()
    if suffix and suffix != EXTENSION and suffix in {".ckpt", ".pt", ".pth", ".bin", ".safetensors", ".sft"}:
        raise LoraPathError(f"'{raw}': erasures are saved as {EXTENSION} files")
    if not parts[-1].lower().endswith(EXTENSION):
        parts[-1] += EXTENSION
    base = Path(folder).resolve()
    target = base.joinpath(*parts)
    # resolve links in the existing part of the path: the file must stay inside the folder
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    real = existing.resolve() / target.relative_to(existing) if existing != target else target.resolve()
    if os.path.commonpath([str(base), str(real)]) != str(base):
        raise LoraPathError(f"'{raw}' resolves outside the loras folder")
    if target.exists() and not overwrite:
        raise LoraPathError(
            f"'{'/'.join(parts)}' already exists in the loras folder; choose another name or enable overwrite"
        )
    if target.exists() and not target.is_file():
        raise LoraPathError(f"'{'/'.join(parts)}' exists and is not a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target, "/".join(parts)
