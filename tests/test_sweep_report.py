"""Recipe loading, grid expansion and the sweep report on a hand-made results file."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
from rich.console import Console

from force_cli.config import SweepSettings, load_recipe
from force_cli.errors import ConfigError, DataError, UnknownNameError
from force_cli.sweep import Cell, expand_grid
from force_cli.sweep.report import markdown, summarise, write_report
from force_cli.sweep.results import read_results


def test_valid_recipe_loads_every_section(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "model: lenet300\ndataset: digits\nseed: 1\n"
        "prune:\n  steps: 10\n  schedule: linear\n"
        "sweep:\n  methods: [force, random]\n  sparsities: [0.9, 0.99]\n  seeds: [0, 1]\n"
    )
    recipe = load_recipe(path)
    assert recipe.common == {"model": "lenet300", "dataset": "digits", "seed": 1}
    assert recipe.settings_for("prune") == {"model": "lenet300", "dataset": "digits", "seed": 1, "steps": 10,
                                            "schedule": "linear"}
    assert recipe.sections["sweep"]["methods"] == ["force", "random"]


@pytest.mark.parametrize("text,fragments", [
    ("modle: lenet300\n", ["unknown key 'modle'", "model"]),
    ("sweep:\n  method: [force]\n", ["section 'sweep'", "unknown key 'method'", "methods"]),
    ("sweep:\n  sparsities: 0.9\n", ["'sparsities' must be list[float]"]),
    ("sweep:\n  seeds: [0, 'one']\n", ["'seeds' must be list[int]"]),
    ("prune:\n  sparsity: high\n", ["'sparsity' must be float | None"]),
    ("seed: true\n", ["'seed' must be int"]),
    ("- a\n- b\n", ["must be a YAML mapping"]),
    ("model: [\n", ["not valid YAML at line"]),
])
def test_invalid_recipes_name_the_key_and_the_file(tmp_path, text, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "bad.yaml" in message
    for fragment in fragments:
        assert fragment in message


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe("/nonexistent/recipe.yaml")


def test_grid_is_seed_major_without_repeats():
    cells = expand_grid(SweepSettings(methods=["force", "snip"], sparsities=[0.9, 0.99, 0.9], seeds=[0, 1]))
    assert cells == [Cell("force", 0.9, 0), Cell("snip", 0.9, 0), Cell("force", 0.99, 0), Cell("snip", 0.99, 0),
                     Cell("force", 0.9, 1), Cell("snip", 0.9, 1), Cell("force", 0.99, 1), Cell("snip", 0.99, 1)]
    assert len({c.key for c in cells}) == 8
    assert Cell("iter-snip", 0.995, 2).key == "iter-snip-s0.995-seed2"


def test_grid_refuses_unknown_methods_bad_sparsities_and_empty_axes():
    with pytest.raises(UnknownNameError, match="known methods"):
        expand_grid(SweepSettings(methods=["force", "obd"], sparsities=[0.9]))
    with pytest.raises(ConfigError, match="outside"):
        expand_grid(SweepSettings(sparsities=[1.0]))
    with pytest.raises(ConfigError, match="at least one"):
        expand_grid(SweepSettings(sparsities=[]))


RECORDS = [
    {"cell": "force-s0.9-seed0", "method": "force", "sparsity": 0.9, "seed": 0, "test_acc": 0.90},
    {"cell": "force-s0.9-seed1", "method": "force", "sparsity": 0.9, "seed": 1, "test_acc": 0.80},
    {"cell": "force-s0.9-seed2", "method": "force", "sparsity": 0.9, "seed": 2, "test_acc": 0.85},
    {"cell": "random-s0.9-seed0", "method": "random", "sparsity": 0.9, "seed": 0, "test_acc": 0.50},
    {"cell": "force-s0.99-seed0", "method": "force", "sparsity": 0.99, "seed": 0, "test_acc": 0.70},
]


def write_results(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_summary_means_and_sample_std_by_hand(tmp_path):
    rows = summarise(RECORDS)
    by = {(r.method, r.sparsity): r for r in rows}
    f = by[("force", 0.9)]
    assert f.n == 3 and f.mean == pytest.approx(0.85)
    # sample std of 0.90, 0.80, 0.85: deviations ±0.05 and 0 -> sqrt((0.0025*2)/2) = 0.05
    assert f.std == pytest.approx(0.05)
    assert by[("random", 0.9)].std == 0.0 and by[("force", 0.99)].n == 1
    assert [(r.method, r.sparsity) for r in rows] == [("force", 0.9), ("force", 0.99), ("random", 0.9)]


def test_markdown_csv_and_plot_are_written(tmp_path):
    write_results(tmp_path / "results.jsonl", RECORDS)
    console = Console(record=True, width=200)
    written = write_report(tmp_path, console, title="digits")
    md = (tmp_path / "results.md").read_text()
    assert "| force | 85.00 ± 5.00 (n=3) | 70.00 (n=1) |" in md
    assert "| random | 50.00 (n=1) | – |" in md
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["method"] == "force" and float(rows[0]["mean_test_acc"]) == pytest.approx(0.85)
    assert float(rows[0]["remaining"]) == pytest.approx(0.1)
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in written["svg"].read_bytes()[:500]
    assert "85.00 ± 5.00" in console.export_text()


def test_interrupted_last_line_is_ignored_but_damage_elsewhere_is_reported(tmp_path):
    path = tmp_path / "results.jsonl"
    write_results(path, RECORDS, tail='{"cell": "force-s0.99-se')
    assert len(read_results(path)) == 5
    path.write_text('{"broken\n' + json.dumps(RECORDS[0]) + "\n")
    with pytest.raises(DataError, match="line 1"):
        read_results(path)


def test_report_without_results_says_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match="force sweep"):
        write_report(tmp_path)


def test_markdown_matches_statistics_module_for_every_group():
    rows = summarise(RECORDS)
    for r in rows:
        values = [x["test_acc"] for x in RECORDS if x["method"] == r.method and x["sparsity"] == r.sparsity]
        assert r.mean == pytest.approx(statistics.fmean(values))
    assert markdown(rows).count("\n") == 4


def test_every_line_of_a_plot_looks_different_past_the_colour_cycle(tmp_path, monkeypatch):
    """Eleven methods outrun matplotlib's ten colours: no two lines may share colour, marker and
    style, and an ablated row (METHOD+CHECK) is dashed beside its solid method."""
    from matplotlib.figure import Figure

    from force_cli.sweep.report import Row, plot

    methods = [f"m{i}" for i in range(10)] + ["m0+reinit"]
    rows = [Row(m, s, 1, 0.5, 0.0, (0.5,)) for m in methods for s in (0.9, 0.99)]
    seen = []
    original = Figure.savefig

    def record(fig, *args, **kwargs):
        if not seen:
            seen.extend((bars.get_label(), bars.lines[0].get_color(), bars.lines[0].get_marker(),
                         bars.lines[0].get_linestyle()) for bars in fig.axes[0].containers)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    plot(rows, tmp_path / "results")
    looks = {label: look for label, *look in seen}
    assert set(looks) == set(methods)
    assert len({tuple(look) for look in looks.values()}) == len(methods)
    assert looks["m0+reinit"][2] == "--" and looks["m0"][2] == "-"
