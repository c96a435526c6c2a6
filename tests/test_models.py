"""Model registry: shapes, parameter counts, refusals, init schemes, determinism."""

from __future__ import annotations

import copy
import hashlib
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from force_cli.errors import IncompatibleError, UnknownNameError
from force_cli.models import (
    DEFAULT_INIT, INIT_SCHEMES, MODELS, build_model, check_compatible, initialize, lenet, model_names,
)

NAMES = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet110", "resnet152",
    "vgg11", "vgg13", "vgg16", "vgg19", "lenet300", "lenet5",
]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta_model(name: str, **kwargs) -> nn.Module:
    """Build on the meta device: shapes and counts without allocating or initialising weights."""
    with torch.device("meta"):
        return build_model(name, init=None, **kwargs)


# --- registry -------------------------------------------------------------------------------


def test_registry_names_are_exact_and_in_order():
    assert model_names() == NAMES
    assert list(MODELS) == NAMES
    assert all(MODELS[n].name == n for n in NAMES)


def test_every_catalog_builder_is_its_architectures_function():
    """Builders are "module:function" strings, resolved on first use: a typo must fail here."""
    from force_cli.models import cifar_resnet, imagenet, vgg

    family = {"resnet": cifar_resnet, "vgg": vgg, "lenet": lenet}
    for name in NAMES:
        generic = family[name.rstrip("0123456789")]
        assert MODELS[name].load(imagenet_style=False) is getattr(generic, name)
        imagenet_module = generic if name in ("resnet110", "lenet300", "lenet5") else imagenet
        assert MODELS[name].load(imagenet_style=True) is getattr(imagenet_module, name)


def test_descriptions_are_single_lines():
    for spec in MODELS.values():
        assert spec.description and "\n" not in spec.description


def test_init_registry():
    assert DEFAULT_INIT == "kaiming-normal"
    assert set(INIT_SCHEMES) == {"kaiming-normal", "kaiming-normal-fan-out", "xavier-normal", "orthogonal"}


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("imagenet_style,size", [(False, 32), (True, 64), (True, 224)])
@pytest.mark.parametrize("name", NAMES)
def test_output_shape_of_every_model(name, imagenet_style, size):
    model = _meta_model(name, num_classes=7, in_channels=3, image_size=size, imagenet_style=imagenet_style)
    assert model(torch.empty(2, 3, size, size, device="meta")).shape == (2, 7)


@pytest.mark.parametrize("name,batch", [
    ("resnet18", 2), ("resnet110", 2), ("vgg11", 2), ("vgg19", 2), ("lenet300", 2), ("lenet5", 2),
    ("resnet50", 1),
])
def test_real_forward_returns_finite_logits(name, batch):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, in_channels=3, image_size=32)
    out = model(torch.randn(batch, 3, 32, 32))
    assert out.shape == (batch, 5) and torch.isfinite(out).all()
    # Raw logits, not probabilities.
    assert not torch.allclose(out.softmax(1).sum(1), out.sum(1))


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_single_channel_input(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, image_size=32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name,key,shape,has_bias", [
    ("resnet18", "conv1", (64, 1, 7, 7), False), ("vgg11", "features.0", (64, 1, 3, 3), True),
])
def test_single_channel_imagenet_first_conv(name, key, shape, has_bias):
    """in_channels=1 replaces torchvision's RGB conv in place: same key, same stride, one input channel."""
    model = _meta_model(name, num_classes=10, in_channels=1, image_size=64, imagenet_style=True)
    rgb = _meta_model(name, num_classes=10, in_channels=3, image_size=64, imagenet_style=True)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv is model.get_submodule(key)
    assert first_conv.weight.shape == shape and (first_conv.bias is not None) == has_bias
    rgb_conv = rgb.get_submodule(key)
    assert (first_conv.stride, first_conv.padding) == (rgb_conv.stride, rgb_conv.padding)
    assert list(model.state_dict()) == list(rgb.state_dict())
    assert _count(rgb) - _count(model) == 2 * shape[0] * shape[2] * shape[3]  # two input channels fewer
    assert model(torch.empty(2, 1, 64, 64, device="meta")).shape == (2, 10)


def test_cifar_vgg_classifier_sees_512_features_at_any_accepted_size():
    torch.manual_seed(0)
    model = build_model("vgg11", num_classes=3, in_channels=3, image_size=64)
    assert model.classifier.in_features == 512
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 3)


def test_generic_models_on_imagenet_style_data_use_their_generic_builder():
    lenet = _meta_model("lenet300", num_classes=200, in_channels=3, image_size=64, imagenet_style=True)
    assert lenet.fc1.in_features == 3 * 64 * 64
    resnet = _meta_model("resnet110", num_classes=200, in_channels=3, image_size=64, imagenet_style=True)
    assert resnet.conv1.out_channels == 16
    tv_resnet = _meta_model("resnet18", num_classes=200, in_channels=3, image_size=64, imagenet_style=True)
    assert tv_resnet.conv1.kernel_size == (7, 7)


def test_lenet5_smallest_accepted_size_works():
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=12)
    assert model(torch.randn(2, 1, 12, 12)).shape == (2, 10)


# --- parameter counts -----------------------------------------------------------------------

# Published figures: kuangliu/pytorch-cifar ResNets with 10 classes; torchvision's model cards.
CIFAR_RESNET_PARAMS = {
    "resnet18": 11_173_962, "resnet34": 21_282_122, "resnet50": 23_520_842,
    "resnet101": 42_512_970, "resnet152": 58_156_618,
}
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    "vgg11": 132_868_840, "vgg13": 133_053_736, "vgg16": 138_365_992, "vgg19": 143_678_248,
}
# Standard VGG cfgs with the fifth max-pool left out (replaced by the average pool).
VGG_CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512],
}


@pytest.mark.parametrize("name,expected", CIFAR_RESNET_PARAMS.items())
def test_cifar_resnet_parameter_counts(name, expected):
    assert _count(_meta_model(name, num_classes=10, in_channels=3, image_size=32)) == expected


def test_resnet110_parameter_count_by_hand():
    # 6n+2 with n=18: stem, 3 stages of 2-conv blocks (option-A shortcuts have no weights), fc.
    conv = lambda cin, cout: cin * cout * 9  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(3, 16) + bn(16)
    cin = 16
    for planes in (16, 32, 64):
        for _ in range(18):
            total += conv(cin, planes) + bn(planes) + conv(planes, planes) + bn(planes)
            cin = planes
    total += 64 * 10 + 10
    assert total == 1_727_962
    model = _meta_model("resnet110", num_classes=10, in_channels=3, image_size=32)
    assert _count(model) == total
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 110


@pytest.mark.parametrize("name", VGG_CFGS)
def test_cifar_vgg_parameter_counts_by_hand(name):
    total, cin = 0, 3
    for v in VGG_CFGS[name]:
        if v != "M":
            total += cin * v * 9 + 2 * v  # bias-free 3x3 conv + BN weight and bias
            cin = v
    total += 512 * 10 + 10
    if name == "vgg19":
        assert total == 20_035_018
    assert _count(_meta_model(name, num_classes=10, in_channels=3, image_size=32)) == total


def test_lenet_parameter_counts():
    torch.manual_seed(0)
    assert _count(build_model("lenet300", num_classes=10, in_channels=1, image_size=28)) == 266_610
    # LeNet-5 on 28x28 with a padded first conv: the classic 61,706.
    assert _count(build_model("lenet5", num_classes=10, in_channels=1, image_size=28)) == 61_706


@pytest.mark.parametrize("name,expected", TORCHVISION_PARAMS.items())
def test_imagenet_parameter_counts_match_torchvision(name, expected):
    model = _meta_model(name, num_classes=1000, in_channels=3, image_size=224, imagenet_style=True)
    assert _count(model) == expected


def test_imagenet_resnet50_and_vgg19_bn_parameter_counts_by_hand():
    """torchvision's model cards, worked out layer by layer: v1.5 bottlenecks; VGG convs with bias."""
    total, cin = 3 * 64 * 49 + 2 * 64, 64  # 7x7 stem conv + BN
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for i in range(blocks):
            out = 4 * planes
            total += cin * planes + planes * planes * 9 + planes * out + 2 * (planes + planes + out)
            if i == 0:
                total += cin * out + 2 * out  # 1x1 downsample conv + BN
            cin = out
    total += 2048 * 1000 + 1000
    assert total == 25_557_032
    model = _meta_model("resnet50", num_classes=1000, in_channels=3, image_size=224, imagenet_style=True)
    assert _count(model) == total

    total, cin = 0, 3
    for v in VGG_CFGS["vgg19"]:
        if v != "M":
            total += cin * v * 9 + v + 2 * v  # 3x3 conv with bias + BN weight and bias
            cin = v
    total += 512 * 7 * 7 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert total == 143_678_248
    assert _count(_meta_model("vgg19", num_classes=1000, in_channels=3, image_size=224, imagenet_style=True)) == total


# Keys of torchvision's state_dicts (present) and keys its layout never has (absent).
TORCHVISION_KEYS = {
    "resnet18": (["conv1.weight", "bn1.running_mean", "layer2.0.downsample.0.weight", "fc.bias"],
                 ["layer1.0.downsample.0.weight", "conv1.bias"]),
    "resnet50": (["layer1.0.downsample.1.weight", "layer4.2.conv3.weight", "fc.weight"],
                 ["layer2.1.downsample.0.weight"]),
    "vgg11": (["features.0.bias", "features.1.running_var", "classifier.3.weight", "classifier.6.bias"],
              ["classifier.7.weight"]),
    "vgg16": (["features.40.weight", "features.41.num_batches_tracked", "classifier.0.weight"],
              ["features.44.weight"]),
}


@pytest.mark.parametrize("name", TORCHVISION_KEYS)
def test_imagenet_state_dict_keys_are_torchvision_keys(name):
    keys = _meta_model(name, num_classes=1000, in_channels=3, image_size=224, imagenet_style=True).state_dict()
    present, absent = TORCHVISION_KEYS[name]
    assert [k for k in present if k not in keys] == []
    assert [k for k in absent if k in keys] == []


def _layout_fingerprint(model: nn.Module) -> str:
    listing = "\n".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in sorted(model.state_dict().items()))
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


# sha256 of every state_dict entry's "key shape dtype", sorted, for 10 classes with 3 and 1 input
# channels, as force-cli's hand-written copies of these architectures gave them (before it built
# torchvision's own): checkpoints written then must keep loading strictly.
IMAGENET_LAYOUTS = {
    "resnet18": ("0a1bc70d22d11a45", "5772552a1a23a996"),
    "resnet34": ("5eae792a16c18ff4", "fd3afdb811c44675"),
    "resnet50": ("08bb7109adb6285c", "153f3b508559230e"),
    "resnet101": ("7503d46acb6146b1", "e35af411f8581e82"),
    "resnet152": ("1129cf385421382c", "110ab61835cc112f"),
    "vgg11": ("bfe53305615744e3", "905a93eea6ddc968"),
    "vgg13": ("b35637755224d6ac", "08421d692419e92c"),
    "vgg16": ("a459862fce1c3298", "9061dc25e4e88941"),
    "vgg19": ("fa19d586691f62a6", "6d0b329ad89d9b4b"),
}


@pytest.mark.parametrize("name", IMAGENET_LAYOUTS)
def test_imagenet_state_dict_layout_is_that_of_earlier_checkpoints(name):
    got = tuple(_layout_fingerprint(_meta_model(name, num_classes=10, in_channels=c, image_size=224,
                                                imagenet_style=True)) for c in (3, 1))
    assert got == IMAGENET_LAYOUTS[name]


def test_imagenet_vgg_cfgs_are_torchvisions():
    """The catalog computes VGG's minimum image size from these without importing torchvision."""
    from torchvision.models.vgg import cfgs

    from force_cli.models import sizes

    letters = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
    assert {name: tuple(cfgs[letter]) for name, letter in letters.items()} == dict(sizes.IMAGENET_VGG_CFGS)


# --- refusals -------------------------------------------------------------------------------


def test_vgg_refuses_16x16():
    with pytest.raises(IncompatibleError, match=r"at least 32x32.*got 16x16"):
        check_compatible("vgg19", num_classes=10, in_channels=3, image_size=16)
    with pytest.raises(IncompatibleError, match="at least 32x32"):
        check_compatible("vgg11", num_classes=10, in_channels=3, image_size=31, imagenet_style=True)
    check_compatible("vgg19", num_classes=10, in_channels=3, image_size=32)


def test_lenet5_refuses_8x8_and_suggests_lenet300():
    with pytest.raises(IncompatibleError) as info:
        build_model("lenet5", num_classes=10, in_channels=1, image_size=8)
    message = str(info.value)
    assert "lenet300" in message and "8x8" in message and "\n" not in message
    with pytest.raises(IncompatibleError):
        check_compatible("lenet5", num_classes=10, in_channels=1, image_size=11)
    check_compatible("lenet5", num_classes=10, in_channels=1, image_size=12)


@pytest.mark.parametrize("field", ["num_classes", "in_channels", "image_size"])
def test_non_positive_sizes_are_refused(field):
    kwargs = dict(num_classes=10, in_channels=3, image_size=32)
    kwargs[field] = 0
    with pytest.raises(IncompatibleError, match=field):
        check_compatible("resnet18", **kwargs)


def test_refusal_happens_before_building(monkeypatch):
    def exploding_builder(*args):
        raise AssertionError("builder must not run for an incompatible pair")

    monkeypatch.setattr(lenet, "lenet5", exploding_builder)  # the catalog's "lenet:lenet5", looked up when built
    with pytest.raises(IncompatibleError):
        build_model("lenet5", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(UnknownNameError):
        build_model("lenet5", num_classes=10, in_channels=1, image_size=28, init="bogus")


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownNameError) as info:
        build_model("resnet9000", num_classes=10, in_channels=3, image_size=32)
    assert info.value.kind == "model"
    assert info.value.known == sorted(NAMES)
    assert "resnet9000" in str(info.value) and "lenet300" in str(info.value)


def test_unknown_init_lists_known_schemes():
    with pytest.raises(UnknownNameError) as info:
        initialize(nn.Linear(2, 2), "he-uniform")
    assert info.value.kind == "init" and info.value.known == sorted(INIT_SCHEMES)
    with pytest.raises(UnknownNameError, match="kaiming-normal"):
        build_model("lenet300", num_classes=10, in_channels=1, image_size=8, init="he-uniform")


# --- init schemes ---------------------------------------------------------------------------


def _initialized(module: nn.Module, scheme: str) -> nn.Module:
    torch.manual_seed(0)
    initialize(module, scheme)
    return module


def test_kaiming_fan_in_std():
    layer = _initialized(nn.Linear(2048, 512), "kaiming-normal")
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 2048), rel=0.05)


def test_kaiming_fan_out_std():
    layer = _initialized(nn.Conv2d(64, 256, 3), "kaiming-normal-fan-out")
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.05)


def test_xavier_normal_std():
    layer = _initialized(nn.Linear(1024, 512), "xavier-normal")
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / (1024 + 512)), rel=0.05)


def test_orthogonal_rows():
    layer = _initialized(nn.Linear(256, 64), "orthogonal")
    w = layer.weight
    assert torch.allclose(w @ w.T, torch.eye(64), atol=1e-5)


@pytest.mark.parametrize("scheme", sorted(INIT_SCHEMES))
def test_init_reinitialises_weights_only_and_resets_batch_norm(scheme):
    """As the paper's code: Conv/Linear weights re-drawn, biases left as they were."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(0.5, 1.5)
    biases = [model[0].bias.detach().clone(), model[3].bias.detach().clone()]
    _initialized(model, scheme)
    assert torch.equal(model[0].bias, biases[0]) and torch.equal(model[3].bias, biases[1])
    assert torch.all(model[1].weight == 1) and torch.all(model[1].bias == 0)
    assert not torch.all((model[0].weight >= 0.5) & (model[0].weight <= 1.5))


def test_build_model_applies_default_init_and_keeps_pytorchs_bias_draw():
    torch.manual_seed(0)
    model = build_model("lenet300", num_classes=10, in_channels=1, image_size=28)
    assert model.fc1.weight.std().item() == pytest.approx(math.sqrt(2 / 784), rel=0.05)
    torch.manual_seed(0)
    plain = build_model("lenet300", num_classes=10, in_channels=1, image_size=28, init=None)
    assert plain.fc1.weight.abs().max().item() <= 1 / math.sqrt(784) + 1e-6
    # the scheme draws after construction, so the biases are exactly PyTorch's default draw
    assert torch.equal(model.fc1.bias, plain.fc1.bias) and not torch.all(model.fc1.bias == 0)
    assert model.fc1.bias.abs().max().item() <= 1 / math.sqrt(784) + 1e-6


@pytest.mark.parametrize("name,first_conv,fan_in", [("resnet18", "conv1", 3 * 49), ("vgg11", "features.0", 3 * 9)])
def test_imagenet_models_get_the_init_scheme_and_keep_torchvisions_biases(name, first_conv, fan_in):
    """The scheme re-draws torchvision's weights (its convs are kaiming fan-out, its VGG linears N(0, 0.01))."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, image_size=32, imagenet_style=True)
    assert model.get_submodule(first_conv).weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last.weight.std().item() == pytest.approx(math.sqrt(2 / last.in_features), rel=0.1)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    biases = [m.bias for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None]
    if name.startswith("vgg"):  # torchvision's VGG zeroes every conv and linear bias
        assert len(biases) == 8 + 3 and all(torch.all(b == 0) for b in biases)
    else:  # ResNet's only bias, fc's, is PyTorch's default draw, uniform in ±1/√fan_in
        assert biases == [model.fc.bias] and model.fc.bias.abs().max() <= 1 / math.sqrt(512)
        assert not torch.all(model.fc.bias == 0)


def test_cifar_vgg_classifier_bias_is_zero_as_in_the_papers_vgg():
    torch.manual_seed(0)
    cifar = build_model("vgg11", num_classes=10, in_channels=3, image_size=32)
    assert torch.all(cifar.classifier.bias == 0)


def test_tiny_imagenet_builds_the_papers_cifar_networks():
    """The paper trains CIFAR VGG-19 (about 20 M weights) and the CIFAR-stem ResNet-50 on 64x64."""
    from force_cli.data import dataset_info
    from force_cli.pruning.masks import prunable_weights

    info = dataset_info("tiny-imagenet")
    args = dict(num_classes=info.num_classes, in_channels=info.in_channels, image_size=info.image_size,
                imagenet_style=info.imagenet_style)
    vgg = _meta_model("vgg19", **args)
    convs = 9 * (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 3 * 256 * 256 + 256 * 512 + 7 * 512 * 512)
    assert convs == 20_018_880
    assert sum(w.numel() for w in prunable_weights(vgg).values()) == convs + 512 * 200  # not 140 M
    assert isinstance(vgg.classifier, nn.Linear) and vgg.classifier.in_features == 512
    resnet = _meta_model("resnet50", **args)
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)  # CIFAR stem, no max-pool


# --- determinism and stability ----------------------------------------------------------------


@pytest.mark.parametrize("name,init", [("lenet5", DEFAULT_INIT), ("resnet18", "orthogonal"), ("vgg11", None)])
def test_same_seed_same_weights(name, init):
    def build(seed):
        torch.manual_seed(seed)
        return build_model(name, num_classes=10, in_channels=3, image_size=32, init=init).state_dict()

    first, second, other = build(1), build(1), build(2)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


@pytest.mark.parametrize("imagenet_style", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_no_renamed_weights(name, imagenet_style):
    model = _meta_model(name, num_classes=10, in_channels=3, image_size=64, imagenet_style=imagenet_style)
    assert not [k for k in model.state_dict() if k.endswith(("_orig", "_mask"))]


@pytest.mark.parametrize("name", ["resnet18", "resnet110", "vgg11", "lenet5"])
def test_hessian_vector_product_works(name):
    """GraSP differentiates through the gradient: double backward must work on these models."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, in_channels=3, image_size=32)
    params = [p for p in model.parameters() if p.dim() > 1]
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 3]))
    grads = torch.autograd.grad(loss, params, create_graph=True)
    z = sum((g * torch.ones_like(g)).sum() for g in grads)
    hvp = torch.autograd.grad(z, params)
    assert all(h.shape == p.shape for h, p in zip(hvp, params))
    assert any(h.abs().sum() > 0 for h in hvp)


def _tiny_imagenet_resnet18():
    """torchvision's ResNet-18 (in-place ReLUs) for 16x16 RGB inputs and 3 classes, in float64."""
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=3, in_channels=3, image_size=16, imagenet_style=True).double()


def _batches(count, size=16):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, size, size, generator=g, dtype=torch.float64), torch.randint(0, 3, (4,), generator=g))
            for _ in range(count)]


def test_torchvision_in_place_relus_change_no_score():
    """In-place ReLUs do not disturb gradients or GraSP's double backward: every data-driven
    criterion scores torchvision's ResNet exactly as the same network with out-of-place ReLUs."""
    from force_cli.pruning.loop import compute_scores
    from tests.helpers import FixedStream

    model = _tiny_imagenet_resnet18()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and all(m.inplace for m in relus)  # what this test is about
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    batches = _batches(count=1)
    for method in ("grasp", "snip", "force", "grasp-it"):
        ours = compute_scores(model, method, stream=FixedStream(batches))
        theirs = compute_scores(plain, method, stream=FixedStream(batches))
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[n], theirs[n]) for n in ours), method
        assert any(ours[n].abs().sum() > 0 for n in ours), method


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # inside torch.func.jvp
def test_grasp_on_torchvision_resnet_matches_forward_over_reverse_differentiation():
    """θ ⊙ Hg from GraSP's double backward through in-place ReLUs, against H·g from torch.func's
    forward-mode derivative of the gradient (no double backward). Finite differences would not do:
    the ReLUs make the gradient jump, so its difference quotients do not converge."""
    from torch.func import functional_call, grad, jvp, replace_all_batch_norm_modules_

    from force_cli.pruning.loop import compute_scores
    from force_cli.pruning.masks import prunable_weights
    from tests.helpers import FixedStream

    model = _tiny_imagenet_resnet18()
    (x, y), = _batches(count=1)
    scores = compute_scores(model, "grasp", stream=FixedStream([(x, y)]))  # cross-entropy at T = 200

    names = set(prunable_weights(model))
    weights = {n: p.detach() for n, p in model.named_parameters() if n in names}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in names}
    functional = copy.deepcopy(model).train()
    replace_all_batch_norm_modules_(functional)  # batch statistics, without writing running ones

    def loss(w):
        z = functional_call(functional, {**fixed, **w}, (x,))
        return nn.functional.cross_entropy(z / 200.0, y)

    g = grad(loss)(weights)
    _, hg = jvp(grad(loss), (weights,), (g,))
    assert scores.keys() == weights.keys()
    for n in weights:
        torch.testing.assert_close(scores[n], weights[n] * hg[n], rtol=1e-9, atol=1e-12 * hg[n].abs().max().item())


def test_imagenet_models_import_torchvision_only_when_built():
    """CLI start-up does not pay for torchvision; building a CIFAR-style model does not either."""
    code = ("import sys; import force_cli.cli; from force_cli.models import build_model; "
            "build_model('resnet18', num_classes=10, in_channels=3, image_size=32); "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_broken_torchvision_is_one_line_naming_the_fix(monkeypatch):
    from force_cli.errors import DependencyError

    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(DependencyError) as info:
        build_model("vgg11", num_classes=10, in_channels=3, image_size=32, imagenet_style=True)
    message = str(info.value)
    assert "torchvision cannot be imported" in message and "pip install torchvision" in message
    assert "model 'vgg11'" in message
    assert "\n" not in message and info.value.exit_code == 2
    build_model("vgg11", num_classes=10, in_channels=3, image_size=32)  # the CIFAR VGG needs no torchvision
