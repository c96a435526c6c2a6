"""The sampled exact top-k against an independent sort-based reference, on many random inputs."""

from __future__ import annotations

import pytest
import torch

from force_cli.pruning import topk
from force_cli.pruning.masks import keep_top_k


def reference_keep(parts, k):
    """Two stable sorts of the flat scores: higher first, then NaN last (after -inf), ties by position."""
    flat = torch.cat([p.flatten() for p in parts]).double()
    by_value = torch.sort(-flat.nan_to_num(0.0), stable=True).indices
    order = by_value[torch.sort(torch.isnan(flat[by_value]).byte(), stable=True).indices]
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    return list(torch.split(keep, [p.numel() for p in parts]))


def random_parts(g, total_max):
    """A few layers of random length whose scores mix continuous values, heavy ties, ±inf and NaN."""
    n_parts = int(torch.randint(1, 6, (1,), generator=g))
    parts = []
    for _ in range(n_parts):
        n = int(torch.randint(1, total_max // n_parts + 2, (1,), generator=g))
        kind = int(torch.randint(0, 5, (1,), generator=g))
        if kind == 0:
            p = torch.rand(n, generator=g)
        elif kind == 1:  # heavy ties
            p = torch.randint(0, 4, (n,), generator=g).float()
        elif kind == 2:  # exact zeros beside continuous values, like dead units
            p = torch.rand(n, generator=g) * (torch.rand(n, generator=g) < 0.3)
        elif kind == 3:  # a non-reviving step: most pruned scores are -inf
            p = torch.rand(n, generator=g).masked_fill_(torch.rand(n, generator=g) < 0.7, float("-inf"))
        else:  # a sorted run: strided samples see structure, not noise
            p = torch.linspace(1, 0, n)
        special = torch.rand(n, generator=g)
        p[special < 0.02] = float("nan")
        p[(special >= 0.02) & (special < 0.03)] = float("inf")
        p[(special >= 0.03) & (special < 0.04)] = float("-inf")
        parts.append(p)
    return parts


@pytest.mark.parametrize("chunk", [topk.CHUNK, 97])  # one chunk per part, and many (97: an odd length)
@pytest.mark.parametrize("flatten_below", [0, topk.FLATTEN_BELOW])  # per-part and flattened
def test_small_sample_settings_exercise_both_the_sampled_and_the_full_path(monkeypatch, flatten_below, chunk):
    """With a tiny sample the bracket both hits and misses, so both paths meet the reference."""
    monkeypatch.setattr(topk, "MIN_SAMPLED", 64)
    monkeypatch.setattr(topk, "FLATTEN_BELOW", flatten_below)
    monkeypatch.setattr(topk, "CHUNK", chunk)
    full_calls = []
    full = topk._top_k_full
    monkeypatch.setattr(topk, "_top_k_full", lambda parts, k: full_calls.append(k) or full(parts, k))
    g = torch.Generator().manual_seed(0)
    cases = 0
    for _ in range(400):
        parts = random_parts(g, 3000)
        total = sum(p.numel() for p in parts)
        for k in {1, int(torch.randint(1, total + 1, (1,), generator=g)), total - 1, round(0.005 * total) or 1}:
            if not 1 <= k < total:
                continue
            before = [p.clone() for p in parts]
            got = topk.top_k_masks(parts, k)
            assert len({m.data_ptr() for m in got} | {p.data_ptr() for p in parts}) == 2 * len(parts)
            for a, b in zip(parts, before):  # inputs untouched (NaN-aware)
                assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
            for m, r in zip(got, reference_keep(parts, k)):
                assert torch.equal(m, r)
            cases += 1
    assert cases > 1000
    assert len(full_calls) > 0 and cases - len(full_calls) > cases / 4  # both paths were taken


@pytest.mark.parametrize("flatten_below", [0, topk.FLATTEN_BELOW])
@pytest.mark.parametrize("seed", range(3))
def test_large_inputs_with_default_settings_match_the_reference(seed, flatten_below, monkeypatch):
    """The last part spans two of the default chunks (262,144), with ties across the boundary."""
    monkeypatch.setattr(topk, "FLATTEN_BELOW", flatten_below)
    g = torch.Generator().manual_seed(seed)
    parts = random_parts(g, 400_000)
    parts.append(torch.rand(70_000, generator=g).abs())  # at least one continuous layer
    parts.append(torch.randint(0, 1000, (300_000,), generator=g).float())
    total = sum(p.numel() for p in parts)
    for fraction in (0.001, 0.05, 0.59):
        k = max(1, round(fraction * total))
        for m, r in zip(topk.top_k_masks(parts, k), reference_keep(parts, k)):
            assert torch.equal(m, r)


def test_keep_top_k_matches_torch_topk_on_distinct_scores_of_many_shapes():
    g = torch.Generator().manual_seed(3)
    shapes = [(64, 3, 3, 3), (128, 64, 3, 3), (10, 512), (300, 784), (1,), (7, 1, 5)]
    scores = {f"l{i}.weight": torch.randn(s, generator=g, dtype=torch.float64) for i, s in enumerate(shapes)}
    flat = torch.cat([s.flatten() for s in scores.values()])
    for k in (1, 17, flat.numel() // 3, flat.numel() - 1):
        masks = keep_top_k(scores, k)
        chosen = torch.cat([m.flatten() for m in masks.values()])
        expected = torch.zeros_like(chosen)
        expected[torch.topk(flat, k).indices] = True
        assert torch.equal(chosen, expected)
        assert all(masks[n].shape == scores[n].shape for n in scores)


def test_sparse_positions_equals_nonzero_at_any_length_offset_and_density():
    g = torch.Generator().manual_seed(5)
    for n in (0, 1, 7, 8, 9, 63, 64, 65, 1001, 40_003):
        for density in (0.0, 0.01, 0.5, 1.0):
            mask = torch.rand(n + 3, generator=g) < density
            for m in (mask[:n], mask[3:]):  # aligned and misaligned storage
                assert torch.equal(topk.sparse_positions(m), torch.nonzero(m).flatten())


@pytest.mark.parametrize("flatten_below", [0, topk.FLATTEN_BELOW])
def test_the_returned_threshold_is_the_kth_largest_score_on_every_path(monkeypatch, flatten_below):
    """The loop reads it to tell a step its scores could not rank (0 or not finite)."""
    monkeypatch.setattr(topk, "MIN_SAMPLED", 64)
    monkeypatch.setattr(topk, "FLATTEN_BELOW", flatten_below)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        parts = random_parts(g, 3000)
        total = sum(p.numel() for p in parts)
        for k in {1, int(torch.randint(1, total + 1, (1,), generator=g)), total}:
            masks, threshold = topk.top_k_masks_and_threshold(parts, k)
            flat = torch.cat(parts).double().nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
            expected = float(flat.sort(descending=True).values[k - 1])
            assert threshold == expected or (threshold != threshold and expected != expected)
            assert sum(int(m.sum()) for m in masks) == k


def test_ranked_reads_the_same_order_statistics_as_a_full_sort_from_either_end():
    g = torch.Generator().manual_seed(7)
    for n in (1, 2, 5, 64, 1000):
        values = torch.randint(0, 9, (n,), generator=g).float()  # ties
        values[torch.rand(n, generator=g) < 0.1] = float("inf")
        descending = values.sort(descending=True).values
        for first in range(0, n, max(1, n // 7)):
            for last in (first, (first + n - 1) // 2, n - 1):
                assert topk._ranked(values, first, last) == (descending[first].item(), descending[last].item())


@pytest.mark.parametrize("flatten_below", [0, topk.FLATTEN_BELOW])
def test_an_empty_part_is_allowed_on_the_sampled_path(monkeypatch, flatten_below):
    monkeypatch.setattr(topk, "MIN_SAMPLED", 64)
    monkeypatch.setattr(topk, "FLATTEN_BELOW", flatten_below)
    g = torch.Generator().manual_seed(11)
    parts = [torch.rand(500, generator=g), torch.empty(0), torch.rand(300, generator=g)]
    for k in (1, 40, 799):
        for m, r in zip(topk.top_k_masks(parts, k), reference_keep(parts, k)):
            assert torch.equal(m, r)
