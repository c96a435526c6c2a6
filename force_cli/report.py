"""Per-layer density and effective-density reports (rich tables and JSON) for `force inspect`:
rendering only; the effective masks come from ``pruning/connectivity.py``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from force_cli.safe_text import literal, visible
from force_cli.pruning.masks import Masks


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
