"""Summaries of a sweep's results file (``results.py`` reads it): mean ± std test accuracy per
method and sparsity, as a rich table, Markdown, CSV, and a plot in the style of the paper's figures."""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from force_cli.atomic import write_atomic
from force_cli.errors import ConfigError, DataError
from force_cli.safe_text import literal
from force_cli.sweep.results import RESULTS_FILE, read_results, read_title

@dataclass(frozen=True)
class Row:
    method: str
    sparsity: float
    n: int
    mean: float
    std: float  # sample standard deviation; 0 for a single seed
    accuracies: tuple[float, ...]

    @property
    def remaining(self) -> float:
        return 1.0 - self.sparsity


def summarise(records: list[dict], metric: str = "test_acc") -> list[Row]:
    groups: dict[tuple[str, float], list[float]] = defaultdict(list)
    order: list[str] = []  # methods in the order they first appear; an ablated one (force+reinit) after its own
    base = lambda method: method.split("+")[0]  # noqa: E731
    for r in records:
        if base(r["method"]) not in order:
            order.append(base(r["method"]))
        groups[(r["method"], float(r["sparsity"]))].append(float(r[metric]))
    rows = []
    for (method, sparsity), values in groups.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(Row(method, sparsity, len(values), statistics.fmean(values), std, tuple(values)))
    return sorted(rows, key=lambda r: (order.index(base(r.method)), r.method != base(r.method), r.method, r.sparsity))


def _pivot(rows: list[Row]):
    methods = list(dict.fromkeys(r.method for r in rows))
    sparsities = sorted({r.sparsity for r in rows})
    cell = {(r.method, r.sparsity): r for r in rows}
    return methods, sparsities, cell


def _fmt(row: Row | None, with_n: bool = True) -> str:
    if row is None:
        return "–"
    # One seed has no spread: print none rather than a misleading "± 0.00".
    text = f"{100 * row.mean:.2f}" if row.n == 1 else f"{100 * row.mean:.2f} ± {100 * row.std:.2f}"
    return f"{text} (n={row.n})" if with_n else text


def render_table(rows: list[Row], console: Console, title: str = "test accuracy (%)") -> None:
    """Compact for a terminal: the seed count goes in the title when every cell has the same."""
    methods, sparsities, cell = _pivot(rows)
    counts = {r.n for r in rows}
    same_n = len(counts) == 1
    if same_n:
        n = counts.pop()
        title = f"{title}, {n} seed" if n == 1 else f"{title}, n={n} seeds"
    table = Table(title=literal(title), padding=(0, 1))
    table.add_column("method")
    for s in sparsities:
        table.add_column(f"{100 * s:g}%", justify="right")
    for m in methods:
        table.add_row(literal(m), *[_fmt(cell.get((m, s)), with_n=not same_n) for s in sparsities])
    # In a terminal rich fits the table to the window; in a pipe or file, print it at its natural width.
    if console.is_terminal:
        console.print(table)
        return
    width = console.width
    console.width = 10_000  # the table does not expand: it takes only the width it needs
    try:
        console.print(table)
    finally:
        console.width = width


def markdown(rows: list[Row]) -> str:
    methods, sparsities, cell = _pivot(rows)
    header = "| method | " + " | ".join(f"{100 * s:g}% sparse" for s in sparsities) + " |"
    rule = "|---|" + "---:|" * len(sparsities)
    body = [f"| {m} | " + " | ".join(_fmt(cell.get((m, s))) for s in sparsities) + " |" for m in methods]
    return "\n".join([header, rule, *body]) + "\n"


def write_csv(rows: list[Row], path: Path) -> None:
    f = io.StringIO(newline="")
    writer = csv.writer(f)
    writer.writerow(["method", "sparsity", "remaining", "n", "mean_test_acc", "std_test_acc", "accuracies"])
    for r in rows:
        writer.writerow([r.method, r.sparsity, f"{r.remaining:.6g}", r.n, f"{r.mean:.6f}", f"{r.std:.6f}",
                         " ".join(f"{a:.6f}" for a in r.accuracies)])
    write_atomic(path, f.getvalue().encode("utf-8"), "results table")


#: matplotlib's default cycle has COLOURS colours; past them a line also changes its marker, so
#: that no two methods of one plot look the same
COLOURS = 10
MARKERS = "os^Dv"


def plot(rows: list[Row], stem: Path, title: str = "") -> list[Path]:
    """Accuracy against the fraction of weights remaining (log axis), one line per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'force-cli[plot]' (tables were still written)") from None
    methods, _, _ = _pivot(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.set_xscale("log")
    remaining = sorted({r.remaining for r in rows if r.method != "dense"} or {r.remaining for r in rows})
    if len(remaining) == 1:  # a single sparsity: give the log axis some width
        ax.set_xlim(remaining[0] / 2, remaining[0] * 2)
    for index, m in enumerate(methods):
        mine = sorted((r for r in rows if r.method == m), key=lambda r: r.remaining)
        if m == "dense" and len(mine) == 1:  # the unpruned reference: a level line across the plot
            ax.axhline(100 * mine[0].mean, color="black", linestyle="--", linewidth=1,
                       label=f"dense ({100 * mine[0].mean:.1f}%)")
            continue
        ax.errorbar([r.remaining for r in mine], [100 * r.mean for r in mine], yerr=[100 * r.std for r in mine],
                    marker=MARKERS[index // COLOURS % len(MARKERS)], markersize=4, capsize=3, label=m,
                    linestyle="--" if "+" in m else "-")  # an ablation (METHOD+CHECK) dashed beside its method
    ax.invert_xaxis()  # sparser to the right, as in the paper's figures
    ax.set_xlabel("fraction of weights remaining (log scale)")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title.replace("$", r"\$"))  # literally: no mathtext from a recipe's title
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small" if len(methods) > 6 else None)
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    try:
        for p in paths:
            buffer = io.BytesIO()
            fig.savefig(buffer, dpi=150, format=p.suffix[1:])
            write_atomic(p, buffer.getvalue(), "plot")
    finally:
        plt.close(fig)
    return paths


def write_report(out_dir: Path, console: Console | None = None, title: str = "") -> dict[str, Path]:
    """Read ``out_dir/results.jsonl``, write results.md/.csv/.png/.svg beside it, then print the table."""
    # One record per cell (the last): a results file written by two sweeps at once, before sweeps
    # locked their folder, could hold a cell twice, which would count its seed twice.
    records = list({r["cell"]: r for r in read_results(out_dir / RESULTS_FILE)}.values())
    title = title or read_title(out_dir)
    if not records:
        raise DataError(f"no finished cells in {out_dir / RESULTS_FILE}; run `force sweep RECIPE --out {out_dir}` first")
    rows = summarise(records)
    written = {"markdown": out_dir / "results.md", "csv": out_dir / "results.csv"}
    write_atomic(written["markdown"], markdown(rows).encode("utf-8"), "results table")
    write_csv(rows, written["csv"])
    try:
        png, svg = plot(rows, out_dir / "results", title=title)
        written |= {"png": png, "svg": svg}
        missing_plot = None
    except ConfigError as exc:  # no matplotlib: the table is still printed, then this is reported
        missing_plot = exc
    if console is not None:  # last: a reader that goes away (`| head`, `| true`) cannot cost a file
        render_table(rows, console, title=f"{title} test accuracy (%), mean ± std over seeds".strip())
    if missing_plot is not None:
        raise missing_plot
    return written
