"""force-ckpt-compact/1: lossless round trip, the encoding's size, refusal of crafted files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from force_cli.checkpoint import compact
from force_cli.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from force_cli.errors import CheckpointError
from tests.test_checkpoint import sample

META = {"stage": "init", "model": "tiny", "model_args": {"num_classes": 3, "in_channels": 3, "image_size": 6},
        "dataset": "synthetic"}


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.01, 0.003, 0.0005, 0.0])
def test_compact_reads_back_the_same_weights_and_masks_as_dense(tmp_path, density):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(300, 784, generator=g)
    m = torch.rand(300, 784, generator=g) < density
    save_checkpoint(tmp_path / "d.safetensors", {"w": w, "b": torch.ones(3)}, {"w": m}, META)
    save_checkpoint(tmp_path / "c.safetensors", {"w": w, "b": torch.ones(3)}, {"w": m}, META, compact=True)
    dense, small = load_checkpoint(tmp_path / "d.safetensors"), load_checkpoint(tmp_path / "c.safetensors")
    assert torch.equal(small.masks["w"], m) and small.masks["w"].dtype == torch.bool
    assert torch.equal(small.state_dict["w"], torch.where(m, w, torch.zeros(()))) and small.state_dict["w"].dtype == w.dtype
    assert torch.equal(small.state_dict["b"], dense.state_dict["b"])
    assert small.metadata["format"] == compact.FORMAT and dense.metadata["format"] == "force-ckpt/1"
    assert "compact" not in small.metadata and read_metadata(tmp_path / "c.safetensors")["model"] == "tiny"


def test_gap_codes_decode_to_the_positions_by_an_independent_walk(tmp_path):
    # kept positions chosen so that both escapes (gaps >= 255) and a long tail occur
    positions = [0, 1, 300, 301, 1000, 1255]
    m = torch.zeros(2000, dtype=torch.bool)
    m[positions] = True
    save_checkpoint(tmp_path / "c.safetensors", {"w": torch.arange(2000.0)}, {"w": m}, META, compact=True)
    tensors, header = _tensors(tmp_path / "c.safetensors")
    codes = tensors["gaps:w"].tolist()
    walked, p = [], 0
    for c in codes:  # the documented meaning: c < 255 skips c then keeps one; 255 skips 255
        if c == 255:
            p += 255
        else:
            walked.append(p + c)
            p += c + 1
    assert walked == positions and 0 <= 2000 - p < 255
    assert tensors["values:w"].tolist() == [float(i) for i in positions]


def test_at_99_percent_sparsity_the_pruned_weights_take_at_most_1_5_times_their_kept_values(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 784, generator=g)
    m = torch.rand(300, 784, generator=g) < 0.01
    save_checkpoint(tmp_path / "c.safetensors", {"w": w}, {"w": m}, META, compact=True)
    tensors, _ = _tensors(tmp_path / "c.safetensors")
    encoded = sum(t.numel() * t.element_size() for t in tensors.values())
    assert encoded <= 1.5 * int(m.sum()) * 4


def _craft(tmp_path, tensors, layout):
    path = tmp_path / "crafted.safetensors"
    header = {"format": compact.FORMAT, "stage": "init", "model": "tiny", "model_args": "{}", "dataset": "synthetic",
              "compact": json.dumps(layout)}
    save_file(tensors, str(path), metadata=header)
    return path


@pytest.mark.parametrize("tensors, layout, reason", [
    # a huge declared shape with a one-byte mask stream: refused before the weight is allocated
    ({"values:w": torch.zeros(1), "gaps:w": torch.tensor([0], dtype=torch.uint8)},
     {"w": {"shape": [10**6, 10**6], "kept": 1, "mask": "gaps"}}, "more than this machine's"),
    ({"values:w": torch.zeros(1), "gaps:w": torch.tensor([0], dtype=torch.uint8)},
     {"w": {"shape": [1000], "kept": 1, "mask": "gaps"}}, "gap codes"),  # the stream covers 1 of 1000
    ({"values:w": torch.zeros(3), "bits:w": torch.tensor([1], dtype=torch.uint8)},
     {"w": {"shape": [8], "kept": 1, "mask": "bits"}}, "float values"),
    ({"values:w": torch.zeros(1), "bits:w": torch.tensor([0b11], dtype=torch.uint8)},
     {"w": {"shape": [8], "kept": 1, "mask": "bits"}}, "does not keep"),
    ({"values:w": torch.zeros(1), "bits:w": torch.tensor([0b10000001], dtype=torch.uint8)},
     {"w": {"shape": [7], "kept": 1, "mask": "bits"}}, "does not keep"),  # a set padding bit
    ({"values:w": torch.zeros(1), "bits:w": torch.zeros(5, dtype=torch.uint8)},
     {"w": {"shape": [8], "kept": 1, "mask": "bits"}}, "bytes"),
    ({"values:w": torch.zeros(2), "gaps:w": torch.tensor([0, 0], dtype=torch.int32)},
     {"w": {"shape": [2], "kept": 2, "mask": "gaps"}}, "gap codes"),
    ({"values:w": torch.zeros(1), "gaps:w": torch.tensor([3], dtype=torch.uint8)},
     {"w": {"shape": [2], "kept": 1, "mask": "gaps"}}, "gap codes"),  # a kept position past the end
    ({"values:w": torch.zeros(1), "bits:w": torch.tensor([1], dtype=torch.uint8)},
     {"w": {"shape": [8], "kept": 9, "mask": "bits"}}, "malformed"),
    ({"values:w": torch.zeros(1), "bits:w": torch.tensor([1], dtype=torch.uint8), "mask:x": torch.ones(1, dtype=torch.bool)},
     {"w": {"shape": [8], "kept": 1, "mask": "bits"}}, "not described"),
    ({"values:w": torch.zeros(1)}, {"w": {"shape": [8], "kept": 1, "mask": "bits"}}, "missing"),
])
def test_crafted_compact_files_are_refused_with_one_line(tmp_path, tensors, layout, reason):
    path = _craft(tmp_path, tensors, layout)
    with pytest.raises(CheckpointError, match=reason) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and "corrupt" in str(info.value)


def test_weights_larger_than_memory_are_refused_before_allocation(tmp_path, monkeypatch):
    # decoding costs, per declared element, the value (4 bytes as float32) and the bool mask (1 byte)
    monkeypatch.setattr(compact, "_memory_bytes", lambda: 200 * 5 - 1)
    m = torch.zeros(200, dtype=torch.bool)  # an emptied layer: a few gap codes stand for 200 weights
    save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(200)}, {"w": m}, META, compact=True)
    with pytest.raises(CheckpointError, match="more than this machine's"):
        load_checkpoint(tmp_path / "c.safetensors")
    monkeypatch.setattr(compact, "_memory_bytes", lambda: 200 * 5)
    assert torch.equal(load_checkpoint(tmp_path / "c.safetensors").state_dict["w"], torch.zeros(200))


def test_a_compact_file_of_a_sample_checkpoint_keeps_training_state(tmp_path):
    state, masks, meta = sample()
    path = save_checkpoint(tmp_path / "c.safetensors", state, masks, meta, extra={"optim.step": torch.tensor(7)},
                           compact=True)
    ckpt = load_checkpoint(path)
    assert ckpt.extra["optim.step"].item() == 7 and set(ckpt.state_dict) == set(state)
    assert np.array_equal(ckpt.masks["0.weight"].numpy(), masks["0.weight"].numpy())
