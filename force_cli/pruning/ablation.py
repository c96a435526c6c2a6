"""The sanity checks of Frankle et al., *Pruning Neural Networks at Initialization: Why Are We
Missing the Mark?* (ICLR 2021), applied to a pruned checkpoint (`force ablate`).

Each writes a new checkpoint from a pruned one (stage ``init``) and records what it did and where
the mask came from under ``ablation`` in the metadata:

- ``shuffle-within-layers``: every layer keeps as many weights as before, at random positions,
  with the network's initial values θ0 there. If accuracy survives, the method's per-layer
  densities carry its signal, not its choice of weights.
- ``reinit``: the same mask on freshly drawn weights (the same architecture and ``--init``, another
  seed). If accuracy survives, the mask does not depend on the particular θ0 it was found on.
- ``invert-scores``: pruning run again with the same settings, keeping the *lowest* scores at every
  step. A good criterion should then do much worse than itself.

Shuffling needs θ0 at the pruned positions, which a checkpoint stores as zero: it is rebuilt from
the recorded seed, model and init, and must equal every weight the checkpoint kept.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from force_cli.checkpoint import Checkpoint, check_new_output, save_checkpoint
from force_cli.checkpoint.metadata import provenance
from force_cli.config import PruneConfig, check_section
from force_cli.errors import CheckpointError, ConfigError
from force_cli.pruning.ablation_names import check_ablation
from force_cli.pruning.connectivity import check_connectivity
from force_cli.pruning.job import build_initial_model, prune_to_checkpoint
from force_cli.pruning.loop import PruneResult
from force_cli.pruning.masks import Masks, count_kept, count_total
from force_cli.restore import check_declared_shapes, load_for_model

def shuffle_within_layers(masks: Masks, generator: torch.Generator) -> Masks:
    """Each layer's mask with its kept positions drawn uniformly at random: same count per layer."""
    shuffled = {}
    for name, mask in masks.items():
        flat = mask.reshape(-1).cpu()
        shuffled[name] = flat[torch.randperm(flat.numel(), generator=generator)].view(mask.shape)
    return shuffled


def prune_settings(ckpt: Checkpoint, where: str) -> PruneConfig:
    """The `force prune` settings a checkpoint records (its ``pruning`` metadata), type-checked."""
    recorded = ckpt.metadata.get("pruning")
    if ckpt.metadata.get("stage") != "init":
        raise ConfigError(f"{where} is a {ckpt.metadata.get('stage')} checkpoint; ablations apply to a pruned, "
                          "untrained one (the output of `force prune`)")
    if not isinstance(recorded, dict) or not isinstance(ckpt.metadata.get("model_args"), dict):
        raise CheckpointError(f"{where} records no pruning settings (it was not written by `force prune`); "
                              "ablations need them to rebuild its initial weights")
    known = {f.name for f in dataclasses.fields(PruneConfig)}
    settings = check_section({k: v for k, v in recorded.items() if k in known}, PruneConfig, f"{where}: 'pruning'")
    return PruneConfig(**settings)


def _build(cfg: PruneConfig, ckpt: Checkpoint, seed: int) -> nn.Module:
    """The initial network of ``cfg`` drawn with ``seed``, once the file's shapes are checked
    against ``cfg.model`` on the meta device (restore's check, trust included: a corrupt file
    cannot ask for a model bigger than itself, nor one that its pruning settings do not name)."""
    check_declared_shapes({**ckpt.metadata, "model": cfg.model}, {k: tuple(v.shape) for k, v in ckpt.state_dict.items()})
    return build_initial_model(dataclasses.replace(cfg, seed=seed), ckpt.metadata["model_args"])


def rebuilt_initial(cfg: PruneConfig, ckpt: Checkpoint, where: str) -> nn.Module:
    """The dense network `force prune` started from (θ0), checked against every weight the file kept."""
    model = _build(cfg, ckpt, cfg.seed)
    for key, value in model.state_dict().items():
        stored = ckpt.state_dict[key]
        mask = ckpt.masks.get(key)
        same = torch.equal(value[mask], stored[mask]) if mask is not None else torch.equal(value, stored)
        if not same:
            raise CheckpointError(f"{where}: rebuilding its initial weights from seed {cfg.seed} does not give back "
                                  f"'{key}' (made with another torch or force-cli version?); cannot ablate it")
    return model


def ablate_checkpoint(source: str | Path, ablation: str, output: str | Path, *, seed: int | None = None,
                      overwrite: bool = False, compact: bool = False, device: str | None = None,
                      data_dir: str | None = None) -> tuple[Path, dict]:
    """Write ``output``: ``source`` under ``ablation`` (one of ``ablation_names.ABLATIONS``).
    Returns the path and the ``ablation`` record written to its metadata.

    ``seed`` draws the shuffle or the new weights (default: the source's seed + 1; ``reinit``
    refuses the source's own seed, which would draw the same weights). ``device`` and ``data_dir``
    override the recorded ones when ``invert-scores`` prunes again.
    """
    check_ablation(ablation)
    source, output = Path(source), Path(output)
    check_new_output(output, overwrite)
    ckpt = load_for_model(source)  # declared shapes checked against the model before anything is read
    cfg = prune_settings(ckpt, str(source))
    seed = cfg.seed + 1 if seed is None else seed
    if ablation == "reinit" and seed == cfg.seed:
        raise ConfigError(f"--seed {seed} is the seed {source} was drawn with, so reinit would draw the same weights; "
                          "give another --seed")
    record = {"kind": ablation, "source": str(source), "source_method": cfg.method,
              "seed": None if ablation == "invert-scores" else seed}

    if ablation == "invert-scores":
        cfg = dataclasses.replace(cfg, allow_disconnected=True, device=device or cfg.device,
                                  data_dir=data_dir if data_dir is not None else cfg.data_dir)
        prune_to_checkpoint(cfg, output, overwrite=overwrite, compact=compact, invert_scores=True,
                            extra_metadata={"ablation": record})
        return output, record

    masks = ckpt.masks
    metadata = {k: v for k, v in ckpt.metadata.items() if k != "format"}
    if ablation == "shuffle-within-layers":
        model = rebuilt_initial(cfg, ckpt, str(source))
        state = model.state_dict()
        masks = shuffle_within_layers(ckpt.masks, torch.Generator().manual_seed(seed))
        args = ckpt.metadata["model_args"]
        result = PruneResult(masks=masks, total=count_total(masks), kept=count_kept(masks),
                             steps=1)
        found = check_connectivity(model, result, (args["in_channels"], args["image_size"], args["image_size"]),
                                   allow=True)
        metadata["pruning_result"] = found | {"unranked_steps": [], "warnings": result.warnings}
    else:  # reinit: the whole network drawn afresh, the mask kept
        state = _build(cfg, ckpt, seed).state_dict()
    metadata |= {"ablation": record} | provenance()
    save_checkpoint(output, state, masks, metadata, compact=compact)
    return output, record
