"""`force ablate`'s library: the "missing the mark" sanity checks on a pruned checkpoint."""

from __future__ import annotations

import pytest
import torch

from force_cli.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from force_cli.config import PruneConfig
from force_cli.errors import CheckpointError, ConfigError
from force_cli.models import build_model
from force_cli.pruning.ablation import ablate_checkpoint, shuffle_within_layers
from force_cli.pruning.job import prune_to_checkpoint

ARGS = dict(num_classes=10, in_channels=1, image_size=8)


def _source(tmp_path, method="magnitude", seed=3):
    cfg = PruneConfig(model="lenet300", dataset="digits", sparsity=0.9, method=method, seed=seed, steps=3)
    path, _ = prune_to_checkpoint(cfg, tmp_path / "source.safetensors")
    return path


def _theta0(seed):
    torch.manual_seed(seed)
    return build_model("lenet300", init="kaiming-normal", **ARGS).state_dict()


def _counts(masks):
    return {n: int(m.sum()) for n, m in masks.items()}


def test_shuffle_keeps_each_layers_count_at_new_positions_with_the_initial_values(tmp_path):
    source = _source(tmp_path)
    out, record = ablate_checkpoint(source, "shuffle-within-layers", tmp_path / "shuffled.safetensors", seed=11)
    before, after = load_checkpoint(source), load_checkpoint(out)
    assert _counts(after.masks) == _counts(before.masks)
    theta0 = _theta0(3)
    for name, mask in after.masks.items():
        assert not torch.equal(mask, before.masks[name])
        assert torch.equal(after.state_dict[name][mask], theta0[name][mask])  # θ0 where now kept
        assert (after.state_dict[name][~mask] == 0).all()
    assert record == {"kind": "shuffle-within-layers", "source": str(source), "source_method": "magnitude", "seed": 11}
    metadata = read_metadata(out)
    assert metadata["ablation"] == record and metadata["pruning"] == read_metadata(source)["pruning"]
    assert 0 < metadata["pruning_result"]["effective_density"]


def test_shuffle_within_layers_is_seeded():
    masks = {"a": torch.tensor([True, False, False, True, False, False]), "b": torch.tensor([[True], [False]])}
    one = shuffle_within_layers(masks, torch.Generator().manual_seed(0))
    two = shuffle_within_layers(masks, torch.Generator().manual_seed(0))
    assert all(torch.equal(one[n], two[n]) for n in masks)
    assert _counts(one) == _counts(masks) and one["b"].shape == (2, 1)


def test_reinit_keeps_the_mask_on_weights_drawn_with_another_seed(tmp_path):
    source = _source(tmp_path)
    out, record = ablate_checkpoint(source, "reinit", tmp_path / "reinit.safetensors")
    assert record["seed"] == 4  # default: the source's seed + 1
    before, after = load_checkpoint(source), load_checkpoint(out)
    fresh = _theta0(4)
    for name, mask in after.masks.items():
        assert torch.equal(mask, before.masks[name])
        assert torch.equal(after.state_dict[name], torch.where(mask, fresh[name], torch.zeros(())))
        assert not torch.equal(after.state_dict[name], before.state_dict[name])
    with pytest.raises(ConfigError, match="same weights"):
        ablate_checkpoint(source, "reinit", tmp_path / "again.safetensors", seed=3)


def test_invert_scores_keeps_the_lowest_scores(tmp_path):
    source = _source(tmp_path)  # magnitude: scores |θ0|, so the inverted mask is the k smallest
    out, record = ablate_checkpoint(source, "invert-scores", tmp_path / "inverted.safetensors")
    assert record["seed"] is None
    after, before = load_checkpoint(out), load_checkpoint(source)
    theta0 = _theta0(3)
    values = torch.cat([theta0[n].abs().flatten() for n in after.masks])
    k = sum(_counts(before.masks).values())
    assert sum(_counts(after.masks).values()) == k
    threshold = values.kthvalue(k).values
    for name, mask in after.masks.items():
        assert torch.equal(mask, theta0[name].abs() <= threshold)  # no ties among random floats
    assert read_metadata(out)["ablation"]["kind"] == "invert-scores"


def test_refusals_leave_no_output(tmp_path):
    source = _source(tmp_path)
    ckpt = load_checkpoint(source)
    trained = tmp_path / "trained.safetensors"
    save_checkpoint(trained, ckpt.state_dict, ckpt.masks, {**ckpt.metadata, "stage": "trained"})
    with pytest.raises(ConfigError, match="untrained"):
        ablate_checkpoint(trained, "reinit", tmp_path / "x.safetensors")
    bare = tmp_path / "bare.safetensors"
    save_checkpoint(bare, ckpt.state_dict, ckpt.masks, {k: v for k, v in ckpt.metadata.items() if k != "pruning"})
    with pytest.raises(CheckpointError, match="no pruning settings"):
        ablate_checkpoint(bare, "shuffle-within-layers", tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="already exists"):
        ablate_checkpoint(source, "reinit", source)
    assert not (tmp_path / "x.safetensors").exists()
    assert torch.equal(load_checkpoint(source).masks["fc1.weight"], ckpt.masks["fc1.weight"])


def test_shuffle_refuses_a_file_whose_weights_the_seed_does_not_rebuild(tmp_path):
    source = _source(tmp_path)
    ckpt = load_checkpoint(source)
    ckpt.state_dict["fc1.weight"][ckpt.masks["fc1.weight"]] += 1.0
    altered = tmp_path / "altered.safetensors"
    save_checkpoint(altered, ckpt.state_dict, ckpt.masks, ckpt.metadata)
    with pytest.raises(CheckpointError, match="does not give back 'fc1.weight'"):
        ablate_checkpoint(altered, "shuffle-within-layers", tmp_path / "x.safetensors")
