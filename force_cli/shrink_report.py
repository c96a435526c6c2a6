"""Tables of `force shrink`, `force inspect` on a shrunk network, `force bench` and the sparse export."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from force_cli.report import _shape
from force_cli.safe_text import literal


def _ms(seconds) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.3f}"


def _bytes(n: int | None) -> str:
    if n is None:  # not measurable (onnxruntime's allocations are its own)
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render_layers(report: dict[str, Any], console: Console, title: str) -> None:
    """Per conv/linear layer: original and shrunk shape, width kept, multiply-accumulates."""
    t = report["totals"]
    table = Table(title=literal(title), show_footer=True)
    table.add_column("layer", footer="total")
    table.add_column("shape")
    table.add_column("shrunk shape")
    table.add_column("width", justify="right")
    table.add_column("kept weights", justify="right", footer=f"{t['kept_weights']:,}")
    table.add_column("format")
    table.add_column("dense MACs", justify="right", footer=f"{t['dense_macs']:,}")
    table.add_column("shrunk MACs", justify="right", footer=f"{t['shrunk_macs']:,}")
    for row in report["layers"]:
        style = "red" if row["width"][1] == 0 else None
        table.add_row(literal(row["layer"]), _shape(row["original_shape"]), _shape(row["shrunk_shape"]),
                      f"{row['width'][0]} → {row['width'][1]}", f"{row['kept_weights']:,}", row["format"],
                      f"{row['dense_macs']:,}", f"{row['shrunk_macs']:,}", style=style)
    console.print(table)
    console.print(f"multiply-accumulates per sample: {t['dense_macs']:,} dense, {t['shrunk_macs']:,} shrunk "
                  f"({t['macs_ratio']:.1f}x fewer); weights: {t['dense_weights']:,} → {t['shrunk_weights']:,}",
                  highlight=False)


def render_bench(report: dict[str, Any], console: Console, title: str) -> None:
    batches = report["batch_sizes"]
    threads = f", {report['threads']} thread(s)" if report.get("threads") else ""
    table = Table(title=literal(f"{title} on {report['device']}{threads}: median of {report['repeats']} (ms)"))
    table.add_column("network")
    for b in batches:
        table.add_column(f"batch {b}", justify="right")
    table.add_column(f"speed-up (batch {batches[-1]})", justify="right")
    table.add_column(f"peak memory (batch {batches[-1]})", justify="right")
    table.add_column("file", justify="right")
    table.add_column("max |Δ| vs dense", justify="right")
    for name, entry in report["networks"].items():
        last = entry["batches"][str(batches[-1])]
        table.add_row(name, *[_ms(entry["batches"][str(b)]["median_s"]) for b in batches],
                      f"{report['speedup'][name]:.2f}x", _bytes(last["peak_bytes"]), _bytes(entry["file_bytes"]),
                      f"{max(entry['batches'][str(b)]['max_abs_diff'] for b in batches):.2e}")
    console.print(table)
    skipped = (report.get("onnxruntime") or {}).get("skipped")
    if skipped:
        console.print(literal(f"onnxruntime: not measured: {skipped}"), highlight=False)
    if not report.get("layers"):
        return
    layers = Table(title=f"layers at batch {batches[-1]} (ms)")
    for column in ("layer", "shape", "density", "shrunk shape", "dense", "shrunk", "csr", "bsr", "break-even density"):
        layers.add_column(column, justify="left" if column in ("layer", "shape", "shrunk shape") else "right")
    for row in report["layers"]:
        even = row.get("break_even_density")
        layers.add_row(literal(row["layer"]), _shape(row["original_shape"]), f"{row['density']:.2%}",
                       _shape(row["shrunk_shape"]), _ms(row["dense_s"]), _ms(row["shrunk_s"]), _ms(row["csr_s"]),
                       _ms(row.get("bsr_s")), "—" if even is None else f"{even:.2%}")
    console.print(layers)
