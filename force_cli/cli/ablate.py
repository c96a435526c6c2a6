"""`force ablate`: one "missing the mark" sanity check applied to a pruned checkpoint, its path printed.

The choice of check, the seed and the output are checked before torch is loaded; the library
(``pruning.ablation.ablate_checkpoint``) does the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from force_cli.checkpoint.paths import check_existing, check_new_output
from force_cli.cli.console import plain_line
from force_cli.cli.options import (CheckpointArg, CompactOpt, DeviceOpt, OverwriteOpt, QuietOpt, ThreadsOpt, TrustOpt,
                                   honours_trust, path)
from force_cli.cli.status import run_wrapper
from force_cli.config import check_int_bounds
from force_cli.errors import ConfigError
from force_cli.locking import hold_output
from force_cli.pruning.ablation_names import ABLATIONS
from force_cli.threads import apply_threads

EPILOG = ("Checks (Frankle et al., ICLR 2021, 'Why are we missing the mark?'):\n\n"
          + "\n\n".join(f"  --{name}: {what}" for name, what in ABLATIONS.items())
          + "\n\nExamples:\n\n"
          "  force ablate lenet.safetensors --shuffle-within-layers -o lenet-shuffled.safetensors\n\n"
          "  force ablate lenet.safetensors --reinit --seed 7 -o lenet-reinit.safetensors\n\n"
          "  force train \"$(force ablate lenet.safetensors --invert-scores -o lenet-inverted.safetensors -q)\"")


@run_wrapper
@honours_trust
def ablate(
    checkpoint: CheckpointArg,
    output: Annotated[Path, typer.Option("--output", "-o", parser=path, metavar="<path>", help="Checkpoint to write (required).")],
    shuffle_within_layers: Annotated[bool, typer.Option("--shuffle-within-layers", metavar="", help="Keep each layer's count of weights, at random positions.")] = False,
    reinit: Annotated[bool, typer.Option("--reinit", metavar="", help="Keep the mask, draw the weights afresh.")] = False,
    invert_scores: Annotated[bool, typer.Option("--invert-scores", metavar="", help="Prune again with the same settings, keeping the lowest scores.")] = False,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the shuffle or of the new weights (default: the checkpoint's seed + 1).")] = None,
    device: DeviceOpt = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root for --invert-scores (default: the checkpoint's).")] = None,
    overwrite: OverwriteOpt = False,
    compact: CompactOpt = False,
    trust_model_code: TrustOpt = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Apply one sanity check to a pruned checkpoint and write the result; print its path."""
    chosen = [name for name, on in (("shuffle-within-layers", shuffle_within_layers), ("reinit", reinit),
                                    ("invert-scores", invert_scores)) if on]
    if len(chosen) != 1:
        raise ConfigError("give exactly one of --shuffle-within-layers, --reinit and --invert-scores "
                          f"(got {len(chosen)}); run one ablate per check")
    check_int_bounds("seed", seed)
    check_existing(checkpoint)
    check_new_output(output, overwrite)
    apply_threads(threads)
    # torch-free start-up: the library loads torch, so it is imported once the settings are known good
    from force_cli.pruning.ablation import ablate_checkpoint

    with hold_output(output):
        written, record = ablate_checkpoint(checkpoint, chosen[0], output, seed=seed, overwrite=overwrite,
                                            compact=compact, device=device, data_dir=data_dir)
    if not quiet:
        seeded = f" (seed {record['seed']})" if record["seed"] is not None else ""
        plain_line(f"{chosen[0]} of {checkpoint}{seeded}")
    print(written)
