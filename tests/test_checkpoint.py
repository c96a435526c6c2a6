"""force-ckpt/1: round trip, refusal of bad files, atomic writes."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from force_cli import atomic
from force_cli.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from force_cli.errors import CheckpointError
from tests.helpers import tiny_convnet


def sample(stage="init"):
    model = tiny_convnet()
    state = model.state_dict()
    masks = {"0.weight": torch.rand(state["0.weight"].shape, generator=torch.Generator().manual_seed(0)) > 0.5,
             "5.weight": torch.ones(state["5.weight"].shape, dtype=torch.bool)}
    meta = {"stage": stage, "model": "tiny", "model_args": {"num_classes": 3, "in_channels": 3, "image_size": 6},
            "dataset": "synthetic", "method": "force", "target_sparsity": 0.5, "seed": 3,
            "history": [{"epoch": 1, "loss": 0.5}]}
    return state, masks, meta


def test_round_trip_keeps_every_tensor_mask_and_metadata_and_zeroes_pruned_weights(tmp_path):
    state, masks, meta = sample()
    path = save_checkpoint(tmp_path / "c.safetensors", state, masks, meta, extra={"optim.step": torch.tensor(7)})
    ckpt = load_checkpoint(path)
    assert set(ckpt.state_dict) == set(state)
    for k, v in state.items():
        expected = v * masks[k] if k in masks else v
        assert torch.equal(ckpt.state_dict[k], expected), k
    assert all(torch.equal(ckpt.masks[k], masks[k]) and ckpt.masks[k].dtype == torch.bool for k in masks)
    assert ckpt.metadata["format"] == "force-ckpt/1"
    assert ckpt.metadata["model_args"] == meta["model_args"] and ckpt.metadata["seed"] == 3
    assert ckpt.metadata["history"] == meta["history"]
    assert ckpt.extra["optim.step"].item() == 7
    assert read_metadata(path)["target_sparsity"] == 0.5
    # the caller's tensors were not zeroed in place
    assert not torch.equal(state["0.weight"], state["0.weight"] * masks["0.weight"])


def test_file_is_plain_safetensors_that_loads_strictly_into_a_fresh_model(tmp_path):
    state, masks, meta = sample()
    path = save_checkpoint(tmp_path / "c.safetensors", state, masks, meta)
    raw = load_file(path)
    model = tiny_convnet(seed=99)
    model.load_state_dict({k: v for k, v in raw.items() if ":" not in k}, strict=True)
    assert "mask:0.weight" in raw


def test_unknown_format_version_is_refused_with_a_clear_message(tmp_path):
    state, masks, meta = sample()
    path = tmp_path / "future.safetensors"
    save_file({"w": torch.zeros(2)}, path, metadata={"format": "force-ckpt/2", "stage": "init"})
    with pytest.raises(CheckpointError, match="format 'force-ckpt/2'.*upgrade force-cli"):
        load_checkpoint(path)


def test_plain_safetensors_without_our_metadata_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a force checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "huge_header"])
def test_corrupt_files_are_refused_not_crashed_on(tmp_path, damage):
    state, masks, meta = sample()
    path = save_checkpoint(tmp_path / "c.safetensors", state, masks, meta)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a tensor file at all" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load_checkpoint(path)


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_mask_that_does_not_match_its_weight_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    meta = {"format": "force-ckpt/1", "stage": "init", "model": "x", "model_args": json.dumps({}), "dataset": "d"}
    save_file({"w": torch.zeros(2, 3), "mask:w": torch.ones(3, 2, dtype=torch.bool)}, path, metadata=meta)
    with pytest.raises(CheckpointError, match=r"mask 'w' has shape \(3, 2\)"):
        load_checkpoint(path)


def test_interrupted_write_leaves_the_existing_file_intact_and_no_temporary(tmp_path, monkeypatch):
    state, masks, meta = sample()
    path = save_checkpoint(tmp_path / "c.safetensors", state, masks, meta)
    original = path.read_bytes()

    def explode(fd, data):  # killed half-way through writing the temporary file
        os.write(fd, b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "write_all", explode)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, state, masks, meta | {"seed": 4})
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["c.safetensors"]
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "new.safetensors", state, masks, meta)
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_writing_into_a_missing_folder_is_a_clear_error(tmp_path):
    state, masks, meta = sample()
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "c.safetensors", state, masks, meta)


def test_written_file_gets_normal_permissions(tmp_path):
    state, masks, meta = sample()
    path = save_checkpoint(tmp_path / "c.safetensors", state, masks, meta)
    assert path.stat().st_mode & 0o644 == 0o644


def test_a_model_from_a_read_checkpoint_is_built_once_on_the_meta_device_and_once_for_real(tmp_path, monkeypatch):
    """load_for_model compares the file with a meta-device skeleton; model_from_checkpoint then needs
    no second skeleton. A plain load_checkpoint still gets the whole check from it."""
    from force_cli import restore
    from force_cli.models import build_model
    from force_cli.pruning.masks import prunable_weights

    model = build_model("lenet300", init=None, num_classes=10, in_channels=1, image_size=8)
    masks = {k: torch.rand(w.shape) < 0.5 for k, w in prunable_weights(model).items()}
    meta = {"stage": "init", "model": "lenet300", "dataset": "digits",
            "model_args": {"num_classes": 10, "in_channels": 1, "image_size": 8}}
    path = save_checkpoint(tmp_path / "c.safetensors", model.state_dict(), masks, meta)
    devices = []
    build = restore.build_from_metadata
    monkeypatch.setattr(restore, "build_from_metadata", lambda m, device=None: devices.append(str(device)) or build(m, device))
    restore.model_from_checkpoint(restore.load_for_model(path))
    assert devices == ["meta", "None"]
    devices.clear()
    restore.model_from_checkpoint(load_checkpoint(path))
    assert devices == ["meta", "None"]
