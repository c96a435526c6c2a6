"""Training library: mask enforcement, schedules, optimizer state, exact resume, divergence, evaluation."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from force_cli.training import loop
from force_cli.checkpoint import load_checkpoint, save_checkpoint
from force_cli.config import TrainSettings
from force_cli.data import DatasetInfo, DataSplits, dataset_info
from force_cli.data.arrays import ArrayDataset
from force_cli.data.transforms import tensor_transforms
from force_cli.errors import CheckpointError, ConfigError, IncompatibleError, UnknownNameError
from force_cli.evaluation import evaluate, evaluate_checkpoint
from force_cli.models import build_model
from force_cli.pruning.masks import prunable_weights
from force_cli.errors import TrainingDiverged, TrainingInterrupted
from force_cli.checkpoint.paths import partial_path, trained_output
from force_cli.training.job import train_checkpoint
from force_cli.training.loop import EpochTotals, TrainCallbacks, Trainer, train_epoch
from force_cli.training.masking import MaskEnforcer
from force_cli.training.order import epoch_batches
from force_cli.training.settings import ADAM_DEFAULT_LR, complete_settings, lr_at
from force_cli.training.state import (
    StopFlag,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    stop_on_signals,
)
from tests.helpers import assert_same_weights, random_batches, strip_times, tiny_convnet, tiny_mlp


def random_masks(model, density=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=g) < density for n, w in prunable_weights(model).items()}


# --------------------------------------------------------------------------------------------
# Mask enforcement
# --------------------------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "sgd-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True),
    "adam-wd": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=5e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_after_every_step(name):
    model = tiny_convnet(seed=1)
    masks = random_masks(model, 0.4, seed=2)
    initial = {n: w.detach().clone() for n, w in prunable_weights(model).items()}
    assert all(bool((initial[n][~m] != 0).any()) for n, m in masks.items())  # something to enforce
    enforcer = MaskEnforcer(model, masks)
    enforcer.apply_()
    optimizer = OPTIMIZERS[name](model.parameters())
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(150)]
    weights = prunable_weights(model)
    steps = []

    def check(totals: EpochTotals):
        for n, m in masks.items():
            assert torch.count_nonzero(weights[n].detach()[~m]) == 0, f"{n} revived after step {totals.batches}"
        steps.append(totals.batches)

    train_epoch(model, batches, optimizer, enforcer, device=torch.device("cpu"), on_batch=check)
    assert steps == list(range(1, 151))
    for n, m in masks.items():
        assert not torch.equal(weights[n].detach()[m], initial[n][m]), f"kept weights of {n} did not train"
        for key, buf in optimizer.state[weights[n]].items():  # momentum / Adam moments stay zero too
            if torch.is_tensor(buf) and buf.shape == m.shape:
                assert torch.count_nonzero(buf[~m]) == 0, f"{key} of {n} is non-zero at a pruned weight"


def test_enforcer_skips_fully_dense_layers_and_keeps_dtype():
    model = tiny_mlp(dtype=torch.float64)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(model).items()}
    masks["0.weight"][0, 0] = False
    enforcer = MaskEnforcer(model, masks)
    assert enforcer.names == ["0.weight"]
    assert enforcer.masks[0].dtype == torch.float64
    enforcer.apply_()
    assert model[0].weight[0, 0] == 0 and model[0].weight[0, 1] != 0


def test_enforcer_follows_channels_last_weights():
    model = tiny_convnet().to(memory_format=torch.channels_last)
    masks = random_masks(model)
    enforcer = MaskEnforcer(model, masks)
    conv = enforcer.names.index("0.weight")
    assert enforcer.masks[conv].is_contiguous(memory_format=torch.channels_last)
    enforcer.apply_()
    assert torch.count_nonzero(model[0].weight.detach()[~masks["0.weight"]]) == 0


# --------------------------------------------------------------------------------------------
# Settings, schedules, optimizer state
# --------------------------------------------------------------------------------------------


def test_cifar_defaults_follow_the_papers_code():
    s = complete_settings(TrainSettings(), "cifar10")
    assert (s.optimizer, s.lr, s.momentum, s.weight_decay, s.batch_size, s.epochs) == ("sgd", 0.1, 0.9, 5e-4, 128, 350)
    assert (s.lr_schedule, s.milestones, s.gamma, s.val_fraction) == ("multistep", [150, 250], 0.1, 0.1)
    assert complete_settings(TrainSettings(optimizer="adam"), "cifar10").lr == ADAM_DEFAULT_LR
    assert complete_settings(TrainSettings(epochs=3, lr=0.5), "digits").epochs == 3
    assert complete_settings(TrainSettings(), "digits").batch_size == 32


@pytest.mark.parametrize("change, error", [
    (dict(epochs=0), ConfigError), (dict(lr=-1.0), ConfigError), (dict(momentum=1.0), ConfigError),
    (dict(milestones=[250, 150]), ConfigError), (dict(val_fraction=1.0), ConfigError),
    (dict(optimizer="lbfgs"), UnknownNameError), (dict(lr_schedule="step"), UnknownNameError),
])
def test_bad_settings_are_refused(change, error):
    with pytest.raises(error):
        complete_settings(TrainSettings(**change), "cifar10")


def test_lr_schedules_match_torch():
    s = complete_settings(TrainSettings(epochs=12, milestones=[4, 9], lr=0.1, gamma=0.5), "cifar10")
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[4, 9], gamma=0.5)
    cos_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(cos_opt, T_max=12)
    c = complete_settings(TrainSettings(epochs=12, lr=0.1, lr_schedule="cosine"), "cifar10")
    for epoch in range(12):
        assert lr_at(s, epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        assert lr_at(c, epoch) == pytest.approx(cos_opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opt.step(), sched.step(), cos_opt.step(), cos.step()


@pytest.mark.parametrize("name", ["sgd-momentum-wd", "adam-wd"])
def test_optimizer_state_round_trips_through_json_and_tensors(name):
    model = tiny_mlp(dtype=torch.float32)
    opt = OPTIMIZERS[name](model.parameters())
    for x, y in random_batches(3, 4, 6, 3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    structure, tensors = optimizer_state_to_tensors(opt)
    structure = json.loads(json.dumps(structure))  # what the checkpoint's metadata does
    fresh = OPTIMIZERS[name](model.parameters())
    fresh.load_state_dict(optimizer_state_from_tensors(structure, tensors))
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for key, value in a["state"][i].items():
            assert torch.equal(value, b["state"][i][key]) if torch.is_tensor(value) else value == b["state"][i][key]


def test_epoch_order_depends_on_seed_and_epoch_only_and_skips_exactly():
    data = TensorDataset(torch.arange(50.0)[:, None], torch.zeros(50, dtype=torch.long))

    def order(epoch, skip=0, seed=0):
        return torch.cat([x.flatten() for x, _ in epoch_batches(data, 8, seed, epoch, skip=skip)]).tolist()

    assert order(1) == order(1) and order(1) != order(2) and order(1, seed=1) != order(1)
    assert sorted(order(3)) == list(range(50))
    assert order(2, skip=3) == order(2)[24:]


# --------------------------------------------------------------------------------------------
# Exact resume (Trainer level, with RNG-driven augmentation and dropout)
# --------------------------------------------------------------------------------------------


class NoisyDataset(Dataset):
    """Draws "augmentation" noise from torch's global RNG, like the real transforms."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 6, 6, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(3, 6, 6), int(self.y[i])


def dropout_net():
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.3), nn.Linear(144, 3))


def splits():
    return DataSplits(dataset_info("synthetic"), NoisyDataset(60, 0), NoisyDataset(12, 1), NoisyDataset(12, 2),
                      NoisyDataset(60, 0))


@pytest.mark.parametrize("optimizer, stop_at, workers", [  # stop_at (epoch, batch): 6 = an epoch's end
    ("sgd", (2, 3), 0), ("adam", (2, 3), 0), ("sgd", (1, 6), 0), ("adam", (1, 6), 0), ("sgd", (2, 3), 2),
])
def test_trainer_resumes_bit_identically(optimizer, stop_at, workers):
    settings = complete_settings(TrainSettings(epochs=3, batch_size=10, optimizer=optimizer, milestones=[2],
                                               workers=workers, save_every=0), "synthetic")
    masks = random_masks(dropout_net(), 0.5, seed=1)
    straight = Trainer(dropout_net(), masks, splits(), settings, seed=7, device=torch.device("cpu"))
    history = straight.run()
    second, resumed = run_stopped_and_resumed(dropout_net, masks, settings, stop_at=stop_at, make_splits=splits)

    assert_same_weights(straight, second)
    assert strip_times(resumed) == strip_times(history)


class PerSample(Dataset):
    """The same dataset seen one sample at a time: the DataLoader path, not the batched one."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]


def array_splits(per_sample: bool = False) -> DataSplits:
    """uint8 images in memory with random crop and flip, 48 training and 12 validation images."""
    info = DatasetInfo("t", 3, 3, 6, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3), False, False)
    train_tf, test_tf = tensor_transforms(info, crop=True, flip=True, augment=True)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 3, 6, 6), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (60,), generator=g)
    train = Subset(ArrayDataset(images, labels, train_tf), list(range(12, 60)))
    plain = ArrayDataset(images, labels, test_tf)
    return DataSplits(info, PerSample(train) if per_sample else train, Subset(plain, list(range(12))),
                      Subset(plain, list(range(12))), Subset(plain, list(range(12, 60))))


def run_stopped_and_resumed(make_net, masks, settings, *, stop_at=(2, 2), make_splits=array_splits):
    """A run on ``make_splits()`` stopped after batch ``stop_at`` = (epoch, batch), its state saved
    (through JSON, as a partial file holds it), then resumed by a fresh Trainer on a fresh
    ``make_net()``; returns that trainer and the history its run returned."""
    stop, saved = StopFlag(), {}

    def on_batch(epoch, batches, totals):
        if (epoch, totals.batches) == stop_at:
            stop.set("test")

    def save(t: Trainer):
        structure, tensors = t.state()
        saved.update(structure=json.loads(json.dumps(structure)), tensors={k: v.clone() for k, v in tensors.items()},
                     model={k: v.clone() for k, v in t.model.state_dict().items()}, history=list(t.history))

    cpu = torch.device("cpu")
    first = Trainer(make_net(), masks, make_splits(), settings, seed=7, device=cpu)
    with pytest.raises(loop.Interrupted):
        first.run(stop=stop, save=save, callbacks=TrainCallbacks(on_batch=on_batch))
    model = make_net()
    model.load_state_dict(saved["model"])
    second = Trainer(model, masks, make_splits(), settings, seed=7, device=cpu)
    second.load_state(saved["structure"], saved["tensors"], saved["history"])
    return second, second.run()


def test_trainer_on_in_memory_data_is_the_per_sample_run_and_resumes_bit_identically():
    """The trainer's batched in-memory path (on its device) trains to the same weights, bit for
    bit, as the one-image-at-a-time DataLoader path, and a run stopped inside an epoch resumes
    to them too."""
    settings = complete_settings(TrainSettings(epochs=3, batch_size=10, milestones=[2], save_every=0), "synthetic")
    masks = random_masks(dropout_net(), 0.5, seed=1)
    cpu = torch.device("cpu")
    batched = Trainer(dropout_net(), masks, array_splits(), settings, seed=7, device=cpu)
    assert batched.train_data.dataset.images.device == cpu
    history = batched.run()
    per_sample = Trainer(dropout_net(), masks, array_splits(per_sample=True), settings, seed=7, device=cpu)
    assert strip_times(per_sample.run()) == strip_times(history)
    assert_same_weights(batched, per_sample)

    second, _ = run_stopped_and_resumed(dropout_net, masks, settings)
    assert_same_weights(batched, second)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trainer_keeps_in_memory_training_images_on_cuda_without_workers():
    settings = complete_settings(TrainSettings(epochs=1, batch_size=10, save_every=0), "synthetic")
    masks = random_masks(dropout_net(), 0.5, seed=1)
    cuda = torch.device("cuda")
    trainer = Trainer(dropout_net(), masks, array_splits(), settings, seed=7, device=cuda)
    assert trainer.train_data.dataset.images.is_cuda
    trainer.run()
    with_workers = complete_settings(TrainSettings(epochs=1, batch_size=10, save_every=0, workers=1), "synthetic")
    assert not Trainer(dropout_net(), masks, array_splits(), with_workers, seed=7, device=cuda).train_data.dataset.images.is_cuda


def test_stop_on_signals_sets_the_flag_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    flag = StopFlag()
    with stop_on_signals(flag):
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.reason == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


# --------------------------------------------------------------------------------------------
# The job: checkpoint files in and out
# --------------------------------------------------------------------------------------------


def make_init_checkpoint(path, density=0.2, seed=0):
    torch.manual_seed(seed)
    args = dict(num_classes=10, in_channels=1, image_size=8, imagenet_style=False)
    model = build_model("lenet300", **args)
    masks = random_masks(model, density, seed)
    metadata = {"stage": "init", "model": "lenet300", "model_args": args, "dataset": "digits", "seed": seed,
                "method": "random"}
    save_checkpoint(path, model.state_dict(), masks, metadata)
    return path


FAST = dict(epochs=4, batch_size=128, milestones=[3], save_every=0)


def test_train_checkpoint_writes_a_trained_checkpoint(tmp_path):
    src = make_init_checkpoint(tmp_path / "init.safetensors")
    before = src.read_bytes()
    log = tmp_path / "run.jsonl"
    result = train_checkpoint(src, settings=TrainSettings(**FAST), device="cpu", log=log)
    assert result.path == tmp_path / "init-trained.safetensors" and src.read_bytes() == before
    ckpt = load_checkpoint(result.path)
    assert ckpt.stage == "trained" and ckpt.metadata["training"]["epochs"] == 4
    assert ckpt.metadata["training"]["lr"] == 0.1 and ckpt.metadata["training"]["seed"] == 0
    assert [r["epoch"] for r in ckpt.metadata["history"]] == [1, 2, 3, 4]
    assert ckpt.metadata["metrics"]["test_acc"] == ckpt.metadata["history"][-1]["test_acc"]
    init = load_checkpoint(src)
    for name, mask in init.masks.items():
        assert torch.equal(ckpt.masks[name], mask)
        assert torch.count_nonzero(ckpt.state_dict[name][~mask]) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    assert set(lines[0]) == set(loop.EPOCH_FIELDS)
    assert not partial_path(result.path).exists()


def test_interrupted_job_resumes_to_identical_weights(tmp_path):
    src = make_init_checkpoint(tmp_path / "init.safetensors")
    straight = train_checkpoint(src, tmp_path / "straight.safetensors", TrainSettings(**FAST), device="cpu")

    stop = StopFlag()
    hooks = TrainCallbacks(on_batch=lambda epoch, n, t: stop.set("test") if (epoch, t.batches) == (2, 5) else None)
    out = tmp_path / "resumed.safetensors"
    with pytest.raises(TrainingInterrupted) as info:
        train_checkpoint(src, out, TrainSettings(**FAST), device="cpu", stop=stop, callbacks=hooks)
    partial = info.value.partial
    assert partial == tmp_path / "resumed.partial.safetensors" and not out.exists()
    assert "--resume" in str(info.value) and "epoch 2" in str(info.value)
    assert load_checkpoint(partial).stage == "partial"
    resumed = train_checkpoint(resume=partial, device="cpu")
    assert resumed.path == out and not partial.exists()

    a, b = load_checkpoint(straight.path), load_checkpoint(out)
    assert a.state_dict.keys() == b.state_dict.keys()
    for key in a.state_dict:
        assert torch.equal(a.state_dict[key], b.state_dict[key]), key
    assert strip_times(a.metadata["history"]) == strip_times(b.metadata["history"])


def test_sigterm_saves_a_partial_checkpoint(tmp_path):
    src = make_init_checkpoint(tmp_path / "init.safetensors")
    previous = signal.getsignal(signal.SIGTERM)
    hooks = TrainCallbacks(on_epoch=lambda r: os.kill(os.getpid(), signal.SIGTERM) if r["epoch"] == 1 else None)
    with pytest.raises(TrainingInterrupted) as info:
        train_checkpoint(src, settings=TrainSettings(**FAST), device="cpu", callbacks=hooks)
    assert info.value.exit_code == 143 and "after epoch 1" in str(info.value)
    assert load_checkpoint(info.value.partial).metadata["training"]["epochs_completed"] == 1
    assert signal.getsignal(signal.SIGTERM) is previous


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    src = make_init_checkpoint(tmp_path / "init.safetensors")
    real = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda s, i: real(s, i) if i < 2 else 1e30)
    out = tmp_path / "out.safetensors"
    with pytest.raises(TrainingDiverged) as info:
        train_checkpoint(src, out, TrainSettings(**FAST | dict(save_every=1)), device="cpu")
    partial = partial_path(out)
    assert "became nan" in str(info.value) or "became inf" in str(info.value)
    assert str(partial) in str(info.value) and "after epoch 2" in str(info.value)
    assert not out.exists()
    kept = load_checkpoint(partial)
    assert kept.metadata["training"]["epochs_completed"] == 2
    assert all(torch.isfinite(v).all() for v in kept.state_dict.values() if v.is_floating_point())


def test_job_refuses_bad_input_without_touching_files(tmp_path):
    src = make_init_checkpoint(tmp_path / "init.safetensors")
    before = src.read_bytes()
    with pytest.raises(CheckpointError, match="holds no training state"):
        train_checkpoint(resume=src, device="cpu")
    with pytest.raises(ConfigError, match="overwrite the input"):
        train_checkpoint(src, src, TrainSettings(**FAST), device="cpu", overwrite=True)
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"mine")
    with pytest.raises(ConfigError, match="already exists"):
        train_checkpoint(src, existing, TrainSettings(**FAST), device="cpu")
    partial_path(tmp_path / "x.safetensors").write_bytes(b"old run")
    with pytest.raises(ConfigError, match="--resume"):
        train_checkpoint(src, tmp_path / "x.safetensors", TrainSettings(**FAST), device="cpu")
    with pytest.raises(ConfigError, match="either"):
        train_checkpoint(src, resume=src)
    assert src.read_bytes() == before and existing.read_bytes() == b"mine"
    assert trained_output(tmp_path / "a.safetensors") == tmp_path / "a-trained.safetensors"
    assert trained_output(tmp_path / "a-trained.partial.safetensors") == tmp_path / "a-trained.safetensors"


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


class Fixed(nn.Module):
    def forward(self, x):
        return x


def test_evaluate_top1_topk_and_loss_by_hand():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    labels = torch.tensor([0, 2, 0, 2])
    m = evaluate(Fixed(), [(logits, labels)], torch.device("cpu"))
    assert m.k == 3 and m.samples == 4  # k = min(5, classes)
    assert m.top1 == 0.25 and m.topk == 1.0
    assert m.loss == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    m2 = evaluate(Fixed(), [(logits, labels)], torch.device("cpu"), k=2)
    assert m2.topk == 0.5  # rows 0 and 1 have their label among the top 2


def test_evaluate_checkpoint_and_class_count_mismatch(tmp_path):
    src = make_init_checkpoint(tmp_path / "init.safetensors", density=0.2)
    report = evaluate_checkpoint(src, device="cpu")
    assert report["samples"] == 360 and report["split"] == "test" and report["top5_k"] == 5
    assert report["density"] == pytest.approx(0.2, abs=0.01) and 0 <= report["top1"] <= report["top5"] <= 1
    assert evaluate_checkpoint(src, split="val", device="cpu")["samples"] == 144  # digits default: 10% held out
    with pytest.raises(IncompatibleError, match="100 classes"):
        evaluate_checkpoint(src, dataset="cifar100", device="cpu")
    with pytest.raises(IncompatibleError, match="images"):
        evaluate_checkpoint(src, dataset="synthetic", device="cpu")
    assert math.isfinite(report["loss"])
