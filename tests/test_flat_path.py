"""The pruning path a GPU takes (``pruning/flat.py``), run on the CPU: same masks, few ops, one read-back.

Every test here forces that path with ``flat.CPU_PATH_DEVICES = frozenset()``; the counts are of
the operations torch dispatches and the host read-backs among them (``force_cli.op_counts``), on
CIFAR-shaped ResNet-18 and VGG-19 made narrow (the same layers and operations, 1/16 of the width).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from force_cli.models.cifar_resnet import BasicBlock, CifarResNet
from force_cli.models.vgg import CFGS, CifarVGG
from force_cli.op_counts import OpCounter
from force_cli.pruning import flat, prune, topk
from force_cli.pruning.masks import keep_top_k
from tests.helpers import FixedStream, tiny_convnet
from tests.test_topk import random_parts, reference_keep

#: Issue 17's bounds for one pruning step on the path CUDA takes.
MAX_READ_BACKS = 4
MAX_OPS_RATIO = 2.0


@pytest.fixture
def flat_path(monkeypatch):
    monkeypatch.setattr(flat, "CPU_PATH_DEVICES", frozenset())


class NarrowResNet18(CifarResNet):
    """The CIFAR ResNet-18 of the registry (same blocks, strides, shortcuts) at 1/16 of its width."""

    def __init__(self, width: int = 4, num_classes: int = 10, seed: int = 0):
        nn.Module.__init__(self)
        torch.manual_seed(seed)
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(BasicBlock, width, 2, stride=1)
        self.layer2 = self._make_layer(BasicBlock, 2 * width, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 4 * width, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 8 * width, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)


def narrow_vgg19(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return CifarVGG(tuple(v if v == "M" else v // 16 for v in CFGS["vgg19"]), 10, 3)


MODELS = {"resnet18": NarrowResNet18, "vgg19": narrow_vgg19}


def cifar_batch(seed=0, size=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)


def counted_steps(model, method, steps=3):
    """(ops, read-backs) of every step after the first of one prune, cut at the ``on_step`` calls."""
    snapshots = []
    with OpCounter() as counter:
        prune(model, method=method, sparsity=0.99, steps=steps, stream=FixedStream([cifar_batch()]),
              on_step=lambda info: snapshots.append(counter.snapshot()))
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(snapshots, snapshots[1:])]


def counted_bare_pass(model):
    """(ops, read-backs) of one bare forward+backward of ``model``, as the speed benchmark runs it."""
    x, y = cifar_batch()
    model = copy.deepcopy(model).train()
    with OpCounter() as counter:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    return counter.ops, counter.read_backs


# --------------------------------------------------------------------------------------------
# The selection: exactly the CPU path's masks and threshold, and an independent stable sort's
# --------------------------------------------------------------------------------------------


def test_flat_selection_equals_the_cpu_path_and_a_stable_sort_on_ties_nan_and_infinities():
    g = torch.Generator().manual_seed(0)
    cases = 0
    for _ in range(300):
        parts = random_parts(g, 3000)  # heavy ties, exact zeros, mostly -inf parts, NaN, ±inf
        total = sum(p.numel() for p in parts)
        for k in {1, int(torch.randint(1, total + 1, (1,), generator=g)), total - 1, total, round(0.005 * total) or 1}:
            if not 1 <= k <= total:
                continue
            scores = torch.cat(parts)
            before = scores.clone()
            kept, threshold = flat.top_k(scores, k)
            assert torch.equal(kept, torch.cat(reference_keep(parts, k)))
            cpu_masks, cpu_threshold = topk.top_k_masks_and_threshold(parts, k)
            assert torch.equal(kept, torch.cat(cpu_masks))
            assert threshold == cpu_threshold
            assert torch.equal(scores.nan_to_num(7.0), before.nan_to_num(7.0))  # input untouched
            cases += 1
    assert cases > 1000


def test_nan_comes_after_minus_infinity_and_ties_go_by_position():
    scores = torch.tensor([float("nan"), float("-inf"), 2.0, float("nan"), float("-inf"), 2.0, 2.0, 5.0])
    expected = {  # by hand: 5 (7), the 2s by position (2, 5, 6), -inf by position (1, 4), NaN (0, 3)
        1: [7], 2: [7, 2], 3: [7, 2, 5], 5: [7, 2, 5, 6, 1], 6: [7, 2, 5, 6, 1, 4], 7: [7, 2, 5, 6, 1, 4, 0],
    }
    for k, positions in expected.items():
        kept, threshold = flat.top_k(scores, k)
        assert torch.nonzero(kept).flatten().tolist() == sorted(positions)
        assert threshold == {1: 5.0, 2: 2.0, 3: 2.0}.get(k, float("-inf"))


def test_keep_top_k_takes_the_flat_path_off_the_cpu_with_the_same_result(flat_path):
    g = torch.Generator().manual_seed(4)
    scores = {f"l{i}": torch.randint(0, 3, s, generator=g).float() for i, s in enumerate([(4, 3, 3, 3), (10, 4), (7,)])}
    for k in (1, 50, 100, 154):  # of 155
        masks, threshold = keep_top_k(scores, k, return_threshold=True)
        reference = reference_keep([s.flatten() for s in scores.values()], k)
        assert all(torch.equal(masks[n].flatten(), r) for n, r in zip(scores, reference))
        assert len({m.data_ptr() for m in masks.values()}) == len(scores)  # separate tensors: savable


# --------------------------------------------------------------------------------------------
# Whole prunes: the flat path's masks are the CPU path's
# --------------------------------------------------------------------------------------------


def prune_both_ways(monkeypatch, make_model, method, **kwargs):
    results = []
    for devices in (flat.CPU_PATH_DEVICES, frozenset()):
        monkeypatch.setattr(flat, "CPU_PATH_DEVICES", devices)
        results.append(prune(make_model(), method=method, **kwargs))
    return results


@pytest.mark.parametrize("method", ["force", "iter-snip", "grasp-it", "snip", "grasp", "magnitude"])
def test_the_flat_path_prunes_exactly_as_the_cpu_path(monkeypatch, method):
    cpu, on_flat = prune_both_ways(monkeypatch, NarrowResNet18, method, sparsity=0.95, steps=4,
                                   stream=FixedStream([cifar_batch(1), cifar_batch(2)]), num_batches=2)
    assert cpu.masks.keys() == on_flat.masks.keys()
    assert all(torch.equal(cpu.masks[n], on_flat.masks[n]) for n in cpu.masks)
    assert [i.threshold for i in cpu.history] == [i.threshold for i in on_flat.history]
    assert len({m.data_ptr() for m in on_flat.masks.values()}) == len(on_flat.masks)  # separate CPU tensors


def test_synflow_and_a_weight_shared_by_two_layers_fall_back_to_per_layer_buffers(monkeypatch):
    """SynFlow turns the working copy to float64 (its weights leave the flat buffer); a weight under
    two names cannot be two views of one buffer. Both must still select exactly as the CPU path."""
    cpu, on_flat = prune_both_ways(monkeypatch, tiny_convnet, "synflow", sparsity=0.9, steps=3,
                                   input_shape=(3, 8, 8))
    assert all(torch.equal(cpu.masks[n], on_flat.masks[n]) for n in cpu.masks)

    def shared():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))
        model[2].weight = model[0].weight
        return model
    g = torch.Generator().manual_seed(0)
    stream = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g))]
    cpu, on_flat = prune_both_ways(monkeypatch, shared, "force", sparsity=0.8, steps=3, stream=FixedStream(stream))
    assert all(torch.equal(cpu.masks[n], on_flat.masks[n]) for n in cpu.masks)


@pytest.mark.parametrize("revives", [True, False])
def test_scores_in_another_order_than_the_weights_keep_their_own_order(monkeypatch, revives):
    """A criterion may return its scores in another layer order than the weights' flat buffer
    (their order breaks ties), here every other step: the masks made in one order must still reach
    the right layers at the next step, when it loads θ0 ⊙ c and when it sets the pruned weights'
    scores to -inf. Layers of one shape, so that no shape check can notice."""
    from force_cli.pruning import criteria

    calls = []

    def reversed_sensitivity(ctx, masks):
        scores = criteria.connection_sensitivity(ctx, masks)
        calls.append(1)
        return dict(reversed(scores.items())) if len(calls) % 2 else scores
    monkeypatch.setitem(criteria.METHODS, "reversed", criteria.Method(
        "reversed", reversed_sensitivity, "test", iterative=True, revives=revives, default_steps=4,
        objective=criteria.Objective("cross-entropy")))

    def same_shapes():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
    g = torch.Generator().manual_seed(0)
    stream = FixedStream([(torch.randn(16, 6, generator=g), torch.randint(0, 6, (16,), generator=g))])
    cpu, on_flat = prune_both_ways(monkeypatch, same_shapes, "reversed", sparsity=0.8, stream=stream)
    assert all(torch.equal(cpu.masks[n], on_flat.masks[n]) for n in cpu.masks)
    assert [i.threshold for i in cpu.history] == [i.threshold for i in on_flat.history]


def test_the_working_weights_are_theta0_times_the_mask_bit_for_bit(flat_path):
    from force_cli.pruning.criteria import load_masked_initial
    from force_cli.pruning.loop import scoring_context

    model = NarrowResNet18()
    caller = {n: p.detach().clone() for n, p in model.named_parameters()}
    ctx = scoring_context(model)
    assert ctx.flat_weights.usable
    shapes = {n: w.shape for n, w in ctx.weights.items()}
    g = torch.Generator().manual_seed(0)
    masks = flat.FlatMasks(torch.rand(sum(s.numel() for s in shapes.values()), generator=g) < 0.3, shapes)
    load_masked_initial(ctx, masks)
    for name, w in ctx.weights.items():
        expected = masks[name].to(w.dtype) * ctx.initial[name]  # 0 * negative weight = -0.0: signs too
        assert torch.equal(w.detach().view(torch.int32), expected.view(torch.int32))
    assert all(torch.equal(p, caller[n]) for n, p in model.named_parameters())  # the caller's model untouched


# --------------------------------------------------------------------------------------------
# Issue 17's bounds: one step, on the path CUDA takes, against a bare forward+backward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["force", "iter-snip"])
@pytest.mark.parametrize("name", ["resnet18", "vgg19"])
def test_one_step_on_the_gpu_path_reads_back_at_most_4_times_and_runs_at_most_2x_the_bare_ops(flat_path, name, method):
    model = MODELS[name]()
    bare_ops, bare_read_backs = counted_bare_pass(model)
    assert bare_read_backs == 0 and bare_ops > 100  # the counter sees the pass
    for ops, read_backs in counted_steps(model, method):
        assert read_backs <= MAX_READ_BACKS, (read_backs, name, method)
        assert ops <= MAX_OPS_RATIO * bare_ops, (ops, bare_ops, name, method)


def test_the_counter_sees_the_read_backs_it_names():
    x = torch.arange(6.0)
    with OpCounter() as counter:
        int(x.sum()), x[x > 2], torch.nonzero(x), x.tolist(), x.cpu(), x.numpy(), x.to("cpu")
    assert counter.read_backs == 6, counter.read_back_names  # .to("cpu") of a CPU tensor moves nothing
    with OpCounter() as counter:
        torch._foreach_mul_([x, x.clone()], 2.0)
    assert counter.by_name["_foreach_mul_"] == 1 and counter.read_backs == 0


# --------------------------------------------------------------------------------------------
# On a real GPU (skipped without one)
# --------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_flat_selection_on_cuda_equals_the_stable_sort():
    g = torch.Generator().manual_seed(2)
    for _ in range(50):
        parts = random_parts(g, 20_000)
        total = sum(p.numel() for p in parts)
        for k in {1, total // 3, total - 1, total}:
            if 1 <= k <= total:
                kept, _ = flat.top_k(torch.cat(parts).cuda(), k)
                assert torch.equal(kept.cpu(), torch.cat(reference_keep(parts, k)))


@cuda
@pytest.mark.parametrize("method", ["force", "iter-snip"])
def test_one_step_on_cuda_meets_the_bounds_and_synchronises_as_often_as_it_reads_back(method):
    """The CUDA runtime's own count of synchronisations (``set_sync_debug_mode``) also sees the
    read-backs that a kernel might make inside an operation, which the dispatch count cannot."""
    import warnings

    model = NarrowResNet18().cuda()
    bare_ops = counted_bare_pass_on(model, "cuda")
    stream = FixedStream([tuple(t.cuda() for t in cifar_batch())])
    snapshots = []
    with warnings.catch_warnings(record=True) as syncs, OpCounter() as counter:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            prune(model, method=method, sparsity=0.99, steps=3, stream=stream,
                  on_step=lambda info: snapshots.append((*counter.snapshot(), len(syncs))))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for (ops_a, read_backs_a, syncs_a), (ops_b, read_backs_b, syncs_b) in zip(snapshots, snapshots[1:]):
        assert read_backs_b - read_backs_a <= MAX_READ_BACKS and ops_b - ops_a <= MAX_OPS_RATIO * bare_ops
        assert syncs_b - syncs_a <= MAX_READ_BACKS, [str(w.message) for w in syncs[syncs_a:syncs_b]]


def counted_bare_pass_on(model, device):
    x, y = (t.to(device) for t in cifar_batch())
    model = copy.deepcopy(model).train()
    with OpCounter() as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.ops
