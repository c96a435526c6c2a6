"""`force shrink`: the shrunk network computes what the masked one computes, and is as small as
the masks allow (hand-worked widths and folded biases, residual ties, every registry model)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from force_cli.models import MODELS, build_model
from force_cli.pruning import METHODS, prune
from force_cli.pruning.masks import prunable_weights
from force_cli.shrink import ShrunkNet
from force_cli.shrink.rewrite import shrink_model
from tests.helpers import FixedStream


def masked_output(model: nn.Module, masks, x: torch.Tensor) -> torch.Tensor:
    """The reference: the model's own forward, eval mode, pruned weights zeroed."""
    params = {k: torch.where(masks[k], v, 0.0) if k in masks else v for k, v in model.named_parameters()}
    model.eval()
    with torch.no_grad():
        return torch.func.functional_call(model, params, (x,))


def shrunk_output(model, masks, x):
    shrunk = shrink_model(model, masks, tuple(x.shape[1:]))
    with torch.no_grad():
        return ShrunkNet(shrunk.program, shrunk.tensors).eval()(x), shrunk


def assert_same_function(expected: torch.Tensor, got: torch.Tensor, rel: float = 1e-5) -> None:
    """Agreement to ``rel`` of the output's scale (logits near zero make element-wise ratios meaningless)."""
    assert got.shape == expected.shape
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((got - expected).abs().max()) <= rel * scale


def widths(shrunk) -> dict[str, list[int]]:
    """(out, in) channels of each shrunk conv/linear layer, by layer name."""
    return {op["layer"]: list(shrunk.tensors[op["weight"]].shape[:2])
            for op in shrunk.program["ops"] if op["op"] in ("conv2d", "linear")}


def bias_of(shrunk, layer):
    (op,) = [op for op in shrunk.program["ops"] if op.get("layer") == layer]
    return shrunk.tensors[op["bias"]]


# --- a hand-worked network -------------------------------------------------------------------

class ThreeLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 4), nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def test_hand_worked_network_keeps_exactly_the_units_on_a_path_and_folds_constants():
    """fc1: unit 0 <- x0, unit 1 has no input (outputs relu(b)=2), unit 2 <- x2 but feeds nothing,
    unit 3 <- x1. fc2: out 0 <- units 0, 1; out 1 <- unit 3; out 2 <- unit 1 only (a constant).
    fc3: logit 0 <- outs 0, 2; logit 1 <- out 1. Kept: fc1 {0, 3}, fc2 {0, 1}; the rest folds."""
    net = ThreeLayers()
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 1.5], [0, -2.0, 0]]))
        net.fc1.bias.copy_(torch.tensor([0.5, 2.0, -1.0, 0.25]))
        net.fc2.weight.copy_(torch.tensor([[1.0, 3.0, 0, 0], [0, 0, 0, 2.0], [0, 0.75, 0, 0]]))
        net.fc2.bias.copy_(torch.tensor([1.0, -1.0, 0.5]))
        net.fc3.weight.copy_(torch.tensor([[2.0, 0, 4.0], [0, -1.0, 0]]))
        net.fc3.bias.copy_(torch.tensor([0.1, 0.2]))
    masks = {k: w != 0 for k, w in prunable_weights(net).items()}
    x = torch.randn(5, 3)
    out, shrunk = shrunk_output(net, masks, x)
    assert widths(shrunk) == {"fc1": [2, 3], "fc2": [2, 2], "fc3": [2, 2]}
    # fc2 unit 0 gets W2[0,1] * relu(b1[1]) = 3 * 2 on top of its bias 1
    assert bias_of(shrunk, "fc2").tolist() == [7.0, -1.0]
    # fc2 unit 2 is relu(0.75 * 2 + 0.5) = 2, so logit 0 gets 4 * 2 on top of 0.1
    assert torch.allclose(bias_of(shrunk, "fc3"), torch.tensor([8.1, 0.2]))
    # and the function, by hand: relu(x0 + 0.5), relu(-2 x1 + 0.25)
    h0, h3 = F.relu(x[:, 0] + 0.5), F.relu(-2 * x[:, 1] + 0.25)
    expected = torch.stack([2 * F.relu(h0 + 7) + 8.1, -F.relu(2 * h3 - 1) + 0.2], 1)
    assert torch.allclose(out, expected, atol=1e-6)


# --- residual ties ---------------------------------------------------------------------------

class OneResidual(nn.Module):
    """stem -> s (3 channels); y = relu(branch(s) + s); head reads y's channels 0 and 2."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 1)
        self.branch = nn.Conv2d(3, 3, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        s = F.relu(self.stem(x))
        y = F.relu(self.branch(s) + s)
        return self.head(torch.flatten(self.pool(y), 1))


def test_a_residual_tie_keeps_the_union_of_what_each_branch_needs():
    """The branch varies only in channel 2 (from s's channel 0); its channel 0 is a constant (its
    bias, different at the borders) that the sum still needs, because the head reads y's channel 0,
    which s also feeds. Ignoring the tie would keep one branch channel against two of s: a wrong
    broadcast sum, or a missing constant."""
    torch.manual_seed(0)
    net = OneResidual()
    with torch.no_grad():
        net.branch.bias.copy_(torch.tensor([0.7, -0.3, 0.2]))
    masks = {"stem.weight": torch.ones(3, 1, 1, 1, dtype=torch.bool),
             "branch.weight": torch.zeros(3, 3, 3, 3, dtype=torch.bool),
             "head.weight": torch.tensor([[True, False, False], [False, False, True]])}
    masks["branch.weight"][2, 0] = True
    x = torch.randn(4, 1, 5, 5)
    out, shrunk = shrunk_output(net, masks, x)
    assert_same_function(masked_output(net, masks, x), out)
    assert widths(shrunk) == {"stem": [2, 1], "branch": [2, 2], "head": [2, 2]}


# --- every registry model --------------------------------------------------------------------

def randomise_constants_(model: nn.Module, seed: int) -> None:
    """Non-trivial batch-norm statistics and biases, so that folded constants are not zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def uneven_masks(model: nn.Module, density: float, seed: int):
    """Random masks whose layer densities spread over three orders of magnitude around ``density``
    (some layers all but emptied), as FORCE's masks at extreme sparsity."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for name, w in prunable_weights(model).items():
        layer_density = min(1.0, density * 10 ** float(3 * torch.rand((), generator=g) - 2))
        masks[name] = torch.rand(w.shape, generator=g) < layer_density
    return masks


def narrow_classifier_(vgg: nn.Module) -> None:
    """torchvision's VGG classifier, 64 units wide instead of 4096 (120 M weights a test cannot
    afford on two cores); the same layers (Linear, ReLU, Dropout) on the same 512x7x7 flatten."""
    layers = list(vgg.classifier)
    layers[0], layers[3], layers[6] = nn.Linear(512 * 7 * 7, 64), nn.Linear(64, 64), nn.Linear(64, 10)
    vgg.classifier = nn.Sequential(*layers)


def _image_size(name: str, imagenet: bool) -> int:
    if name.startswith("vgg"):
        return 32  # the smallest either VGG builder accepts
    return {"lenet300": 8, "lenet5": 12}.get(name, 8 if imagenet else 4)


REGISTRY_CASES = [(name, imagenet) for name in MODELS for imagenet in (False, True)
                  if not imagenet or MODELS[name].imagenet_builder is not None]


@pytest.fixture(scope="module")
def built():
    """One model at a time (the three densities of a model share it)."""
    cache = {}

    def get(name, imagenet):
        if (name, imagenet) not in cache:
            cache.clear()
            torch.manual_seed(0)
            size = _image_size(name, imagenet)
            model = build_model(name, num_classes=10, in_channels=3, image_size=size, imagenet_style=imagenet,
                                init=None).eval()
            if imagenet and name.startswith("vgg"):
                narrow_classifier_(model)
            randomise_constants_(model, 1)
            cache[(name, imagenet)] = (model, size)
        return cache[(name, imagenet)]

    return get


@pytest.mark.parametrize("density", [0.1, 0.01, 0.005])
@pytest.mark.parametrize("name,imagenet", REGISTRY_CASES, ids=[f"{n}-{'imagenet' if i else 'cifar'}" for n, i in REGISTRY_CASES])
def test_every_registry_model_shrinks_to_the_same_function(built, name, imagenet, density):
    model, size = built(name, imagenet)
    masks = uneven_masks(model, density, seed=2)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(3))
    out, shrunk = shrunk_output(model, masks, x)
    assert_same_function(masked_output(model, masks, x), out)
    dense = sum(w.numel() for w in prunable_weights(model).values())
    assert sum(shrunk.tensors[op["weight"]].numel() for op in shrunk.program["ops"] if "weight" in op) <= dense


@pytest.mark.parametrize("method", list(METHODS))
def test_masks_of_every_method_shrink_to_the_same_function(method):
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=4, in_channels=1, image_size=12, init="kaiming-normal")
    randomise_constants_(model, 1)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 12, 12, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(2)]
    x = torch.randn(5, 1, 12, 12, generator=g)
    for sparsity in (0.9, 0.99, 0.995):
        masks = prune(model, method=method, sparsity=sparsity, steps=3, stream=FixedStream(batches),
                      input_shape=(1, 12, 12)).masks
        out, _ = shrunk_output(model, masks, x)
        assert_same_function(masked_output(model, masks, x), out)


class Concatenation(nn.Module):
    """Two branches concatenated on channels, a batch norm that follows no conv (an 'affine' op),
    average and max pools, a zero pad of the channels: the ops no registry model uses."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 1)
        self.norm = nn.BatchNorm2d(7)
        self.c = nn.Conv2d(9, 5, 3, padding=1, bias=False)
        self.head = nn.Linear(5 * 2 * 2, 3)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.avg_pool2d(self.b(x), 3, 1, 1)], 1)
        y = F.pad(F.relu(self.norm(y)), (0, 0, 0, 0, 1, 1))
        y = F.max_pool2d(self.c(y), 2)
        return self.head(torch.flatten(y, 1))


def test_concatenation_pads_and_standalone_norms_shrink_to_the_same_function():
    torch.manual_seed(0)
    net = Concatenation()
    randomise_constants_(net, 4)
    masks = {n: torch.rand(w.shape) < 0.3 for n, w in prunable_weights(net).items()}
    masks["a.weight"][1] = False  # channel 1 of branch a is a constant, relu(bias)
    masks["c.weight"][:, 4] = False  # concatenated channel 3 (b's first) is read by nothing
    x = torch.randn(6, 2, 4, 4)
    out, shrunk = shrunk_output(net, masks, x)
    assert_same_function(masked_output(net, masks, x), out)
    assert {op["op"] for op in shrunk.program["ops"]} >= {"cat", "pad", "affine", "avg_pool2d", "max_pool2d"}


# --------------------------------------------------------------------------------------------
# BSR (block sparse rows), which `force bench` times per layer beside CSR
# --------------------------------------------------------------------------------------------

def test_the_bsr_block_is_the_largest_side_that_divides_the_matrix():
    from force_cli.shrink.sparse import bsr_block

    assert bsr_block(300, 784) == 4  # LeNet-300-100's first layer: 300 = 4 * 75, 784 = 4 * 196
    assert bsr_block(10, 100) == 2 and bsr_block(4, 6) == 2  # 10 and 6 are even, not multiples of 4
    assert bsr_block(9, 100) is None and bsr_block(1, 1) is None  # torch's BSR needs whole blocks


def test_a_bsr_weight_gives_the_dense_layer_s_product():
    """The BSR matrix of a masked weight, through the product bench times, against F.linear and
    F.conv2d on the dense weight."""
    from force_cli.shrink.program import sparse_product
    from force_cli.shrink.sparse import to_bsr

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 8, generator=g) * (torch.rand(6, 8, generator=g) < 0.3)
    x = torch.randn(5, 8, generator=g)
    matrix = to_bsr(weight)
    assert matrix.layout == torch.sparse_bsr and matrix.values().shape[1:] == (2, 2)
    torch.testing.assert_close(sparse_product({"op": "linear"}, x, matrix), F.linear(x, weight))

    kernel = torch.randn(4, 2, 3, 3, generator=g) * (torch.rand(4, 2, 3, 3, generator=g) < 0.3)  # (4, 18) matrix
    images = torch.randn(3, 2, 5, 5, generator=g)
    op = {"op": "conv2d", "kernel_size": [3, 3], "dilation": [1, 1], "padding": [1, 1], "stride": [1, 1],
          "output_size": [5, 5]}
    matrix = to_bsr(kernel)
    assert matrix.shape == (4, 18) and matrix.values().shape[1:] == (2, 2)
    torch.testing.assert_close(sparse_product(op, images, matrix), F.conv2d(images, kernel, padding=1))
    assert to_bsr(torch.ones(3, 5)) is None


# --------------------------------------------------------------------------------------------
# onnxruntime (optional), which `force bench` times as a fourth network
# --------------------------------------------------------------------------------------------

def test_onnx_runner_says_why_it_cannot_run(monkeypatch):
    from force_cli.shrink import onnx_runtime

    net = nn.Linear(3, 2)
    monkeypatch.setattr(onnx_runtime.importlib.util, "find_spec", lambda name: None)
    run, size, why = onnx_runtime.onnx_runner(net, torch.zeros(1, 3), threads=1)
    assert (run, size) == (None, 0) and why == "onnx and onnxruntime not installed (pip install 'force-cli[onnx]')"
    monkeypatch.undo()
    if not onnx_runtime.missing_packages():
        run, size, why = onnx_runtime.onnx_runner(net, torch.zeros(1, 3, device="meta"), threads=1)
        assert run is None and "CPU only" in why


def test_onnx_runner_computes_what_the_network_computes_at_any_batch():
    """One export with a dynamic batch axis, against the torch module at batch 1 and 5."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from force_cli.shrink.onnx_runtime import onnx_runner

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()
    run, size, why = onnx_runner(net, torch.zeros(1, 1, 4, 4), threads=1)
    assert why is None and size > 4 * sum(p.numel() for p in net.parameters())  # the weights are in it, as float32
    for batch in (1, 5):
        x = torch.randn(batch, 1, 4, 4)
        with torch.no_grad():
            torch.testing.assert_close(run(x), net(x), rtol=1e-5, atol=1e-6)
