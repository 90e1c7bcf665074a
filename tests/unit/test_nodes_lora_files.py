"""Where CARE Save Erasure as LoRA writes: inside the loras folder only, never over a file unless asked."""

from __future__ import annotations

import os

import pytest

from nodes.lora_files import LoraPathError, lora_target


def test_plain_name_gets_extension(tmp_path):
    path, name = lora_target(tmp_path, "care_boat")
    assert path == tmp_path.resolve() / "care_boat.safetensors" and name == "care_boat.safetensors"


def test_subfolder_is_created_inside(tmp_path):
    path, name = lora_target(tmp_path, "care/boat.safetensors")
    assert path.parent.is_dir() and path.parent == tmp_path.resolve() / "care"
    assert name == "care/boat.safetensors"
    _, name = lora_target(tmp_path, "care\\\\car")
    assert name == "care/car.safetensors"


@pytest.mark.parametrize(
    "bad,message",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("../evil", "leaves the loras folder"),
        ("care/../../evil", "leaves the loras folder"),
        ("/etc/evil", "absolute path"),
        ("C:/evil", "absolute path"),
        ("evil.ckpt", "saved as .safetensors"),
        ("nul\x00byte", "NUL"),
    ],
)
def test_bad_names_are_refused(tmp_path, bad, message):
    with pytest.raises(LoraPathError, match=message):
        lora_target(tmp_path, bad)


def test_existing_file_needs_overwrite(tmp_path):
    (tmp_path / "kept.safetensors").write_bytes(b"x")
    with pytest.raises(LoraPathError, match="already exists"):
        lora_target(tmp_path, "kept")
    path, _ = lora_target(tmp_path, "kept", overwrite=True)
    assert path.name == "kept.safetensors"


def test_directory_of_that_name_is_refused(tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(LoraPathError, match="not a file"):
        lora_target(tmp_path, "dir", overwrite=True)


def test_link_pointing_outside_is_refused(tmp_path):
    loras, outside = tmp_path / "loras", tmp_path / "outside"
    loras.mkdir()
    outside.mkdir()
    os.symlink(outside, loras / "escape")
    with pytest.raises(LoraPathError, match="outside the loras folder"):
        lora_target(loras, "escape/evil")
    assert not list(outside.iterdir())
