"""Per-layer density and effective-density reports (rich tables and JSON) for `force inspect`.

Effective density: a kept weight that lies on no path from the input to the output through kept
weights cannot influence the output, so it counts as removed (Vysogorets & Kempe, 2021). It is
computed exactly by a reachability pass: on a copy of the network with every kept weight set to 1,
biases to 0, normalisation layers removed and max-pools replaced by average pools, each layer's
output is binarised (reached from the input or not) on the way forward and each gradient
binarised (reaches the output or not) on the way back. A kept weight is effective iff its
gradient is non-zero. Binarising keeps every value small, so no depth can overflow or underflow.

The pass runs at the input size the checkpoint's metadata claims, which the weights of a conv net
do not bound. `force inspect` therefore counts first, on the meta device (no memory), the
activations the pass would hold, and skips the effective density with a warning beyond
``REACHABILITY_BUDGET`` (about 16 bytes each): a small file cannot make inspect use gigabytes.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text
from torch import nn

from force_cli.safe_text import literal, visible
from force_cli.pruning.masks import PRUNABLE_LAYERS, Masks, prunable_weights

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_MAX_POOLS = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
_ADAPTIVE_MAX_POOLS = {nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
                       nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d}


def _linearise(module: nn.Module) -> None:
    """Replace, in place, layers that could hide a path: norms subtract means, max-pools pick one input."""
    for name, child in module.named_children():
        if isinstance(child, _NORMS):
            setattr(module, name, nn.Identity())
        elif type(child) in _MAX_POOLS:
            setattr(module, name, _MAX_POOLS[type(child)](child.kernel_size, child.stride, child.padding,
                                                          ceil_mode=child.ceil_mode))
        elif type(child) in _ADAPTIVE_MAX_POOLS:
            setattr(module, name, _ADAPTIVE_MAX_POOLS[type(child)](child.output_size))
        else:
            _linearise(child)


#: Activation elements `force inspect`'s reachability pass may hold (float64 values and their
#: gradients, about 16 bytes each: 2 GiB). An ImageNet ResNet-50 at 224 px needs 32 M, a VGG-19 46 M;
#: a CIFAR ResNet-18 that claims 512 px inputs would need 363 M.
REACHABILITY_BUDGET = 1 << 27


def reachability_size(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """The activation elements the reachability pass of ``model`` holds, counted by running it on
    the meta device (shapes only); None when its forward cannot run there."""
    probe = copy.deepcopy(model).to("meta")
    _linearise(probe)
    count = math.prod(input_shape)

    def add(module, inputs, output):
        nonlocal count
        if isinstance(output, torch.Tensor) and next(module.children(), None) is None:
            count += output.numel()

    handles = [m.register_forward_hook(add) for m in probe.modules()]
    try:
        probe(torch.empty((1, *input_shape), device="meta"))
    except Exception:  # a forward that needs real values (.item(), say): not counted
        return None
    finally:
        for h in handles:
            h.remove()
    return count


def _binarise_output(module, inputs, output):
    reached = (output > 0).to(output.dtype)
    out = output + (reached - output).detach()  # value: reached-or-not; gradient: passes straight through
    out.register_hook(lambda grad: (grad > 0).to(grad.dtype))
    return out


def effective_masks(model: nn.Module, masks: Masks, input_shape: tuple[int, ...]) -> Masks:
    """Kept weights that lie on at least one input-to-output path through kept weights."""
    work = copy.deepcopy(model).cpu().double().eval()
    _linearise(work)
    weights = prunable_weights(work)
    with torch.no_grad():
        for name, p in work.named_parameters():
            if name in weights:
                p.copy_(masks[name].to(p.dtype))
            else:
                p.zero_()
    for name, w in weights.items():
        w.requires_grad_(True)
    handles = [m.register_forward_hook(_binarise_output) for m in work.modules() if isinstance(m, PRUNABLE_LAYERS)]
    try:
        work(torch.ones((1, *input_shape), dtype=torch.float64)).sum().backward()
    finally:
        for h in handles:
            h.remove()
    return {name: masks[name] & (w.grad > 0) for name, w in weights.items()}


@dataclass
class LayerRow:
    layer: str
    shape: list[int]
    weights: int
    kept: int
    density: float
    effective_kept: int | None  # None: not computed (see ``inspection.inspect_checkpoint``)
    effective_density: float | None


def layer_rows(masks: Masks, effective: Masks | None) -> list[LayerRow]:
    rows = []
    for name, mask in masks.items():
        n, kept = mask.numel(), int(mask.sum())
        eff = int(effective[name].sum()) if effective is not None else None
        rows.append(LayerRow(name, list(mask.shape), n, kept, kept / n, eff, eff / n if eff is not None else None))
    return rows


def summary(masks: Masks, effective: Masks | None, metadata: dict[str, Any], path: str) -> dict[str, Any]:
    """Everything `force inspect` shows, as one JSON-ready document (``effective`` None: the
    effective counts are None, and so is ``disconnected``)."""
    rows = layer_rows(masks, effective)
    total = sum(r.weights for r in rows)
    kept = sum(r.kept for r in rows)
    eff = sum(r.effective_kept for r in rows) if effective is not None else None
    return {
        "path": path,
        "metadata": metadata,
        "layers": [asdict(r) for r in rows],
        "totals": {
            "weights": total,
            "kept": kept,
            "density": kept / total if total else 0.0,
            "sparsity": 1 - kept / total if total else 1.0,
            "effective_kept": eff,
            "effective_density": None if eff is None else eff / total if total else 0.0,
        },
        "empty_layers": [r.layer for r in rows if r.kept == 0],
        "disconnected": None if eff is None else eff == 0,
    }


def _shape(shape: list[int]) -> str:
    return "×".join(map(str, shape))


def _count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.4%}"


def render(report: dict[str, Any], console: Console) -> None:
    """Every string from the file (metadata, layer names) and its path is shown literally."""
    meta = report["metadata"]
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    for key in sorted(meta):
        if key in ("history",):
            continue
        value = meta[key]
        info.add_row(literal(key), literal(value if isinstance(value, str) else json.dumps(value)))
    console.print(info)

    table = Table(title=literal(report["path"]), show_footer=True)
    t = report["totals"]
    table.add_column("layer", footer="total")
    table.add_column("shape")
    table.add_column("weights", justify="right", footer=f"{t['weights']:,}")
    table.add_column("kept", justify="right", footer=f"{t['kept']:,}")
    table.add_column("density", justify="right", footer=f"{t['density']:.4%}")
    table.add_column("effective", justify="right", footer=_count(t["effective_kept"]))
    table.add_column("eff. density", justify="right", footer=_percent(t["effective_density"]))
    for row in report["layers"]:
        fewer = row["effective_kept"] is not None and row["effective_kept"] < row["kept"]
        style = "red" if row["kept"] == 0 else ("yellow" if fewer else None)
        table.add_row(literal(row["layer"]), _shape(row["shape"]), f"{row['weights']:,}", f"{row['kept']:,}",
                      f"{row['density']:.4%}", _count(row["effective_kept"]), _percent(row["effective_density"]),
                      style=style)
    console.print(table)
    if report["empty_layers"]:
        console.print(Text.assemble(("layers with no kept weights: ", "red"), visible(", ".join(report["empty_layers"]))))
    if report["disconnected"]:
        console.print("[bold red]the network is disconnected: no path from input to output survives; "
                      "it can only output a constant[/]")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_document(value: Any) -> str:
    """Strict JSON for `--json`: NaN and infinities (an empty split, a diverged metric) become
    ``null``, since strict parsers (jq, JavaScript) reject bare ``NaN``."""
    return json.dumps(_finite(value), allow_nan=False)
