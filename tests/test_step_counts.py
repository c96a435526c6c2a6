"""What a training step and an evaluation batch cost on the path CUDA takes, counted on the CPU.

On a GPU every dispatched operation is a kernel launch and every read-back of a value to the host
(``.item()``, ``float()``/``int()``/``bool()`` of a tensor, ``nonzero``) stalls the host until the
device is idle. ``force_cli.op_counts.OpCounter`` sees every operation torch dispatches, forward
and backward, and the host copies that dispatch nothing on a CPU tensor (``tolist()``,
``numpy()``, ``cpu()``), so both can be counted here without a GPU.

The path CUDA takes: the running sums are read back every ``sync_interval(cuda)`` steps, the
optimizer uses torch's foreach kernels (its default on CUDA; on the CPU it loops per tensor),
and evaluation batches an in-memory split on the device without a DataLoader.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from force_cli.config import TrainSettings
from force_cli.evaluation import evaluate
from force_cli.models import build_model
from force_cli.op_counts import OpCounter
from force_cli.training.loop import Trainer, sync_interval, train_epoch
from force_cli.training.masking import MaskEnforcer
from force_cli.training.settings import complete_settings
from tests.helpers import tiny_convnet
from tests.test_training import array_splits, random_masks

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
def resnet18_setup():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=32).train()
    masks = random_masks(model, 0.05, seed=1)
    enforcer = MaskEnforcer(model, masks)
    enforcer.apply_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True)
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 10, (2,), generator=g)) for _ in range(8)]
    return model, enforcer, optimizer, batches


def test_sync_interval_reads_back_rarely_on_a_gpu():
    assert sync_interval(CPU) == 1 and sync_interval(CUDA) == 25


def test_a_training_step_reads_nothing_back_and_adds_at_most_5_percent_of_operations():
    """CIFAR ResNet-18 (batch 2), 95 % pruned, SGD with momentum and weight decay: force's
    step (train_epoch at CUDA's sync interval) against a bare step written here. Epochs of 2 and 6
    steps: their difference is 4 steps' worth, without the epoch's own set-up and final read-back."""
    model, enforcer, optimizer, batches = resnet18_setup()

    def force_epoch(n):
        train_epoch(model, batches[:n], optimizer, enforcer, device=CPU, sync_every=sync_interval(CUDA))

    def bare_epoch(n):
        for x, y in batches[:n]:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    force_epoch(1)  # the first step creates the momentum buffers
    counts = {}
    for name, epoch in (("force", force_epoch), ("bare", bare_epoch)):
        for n in (2, 6):
            counts[name, n] = OpCounter()
            with counts[name, n]:
                epoch(n)
    per_step = {name: (counts[name, 6].ops - counts[name, 2].ops) / 4 for name in ("force", "bare")}
    # read-backs: the epoch's final sync only (the loss sum and the correct count), none per step
    assert counts["force", 2].read_backs == counts["force", 6].read_backs == 2
    assert counts["force", 6].read_back_names == {"_local_scalar_dense": 2}
    assert counts["bare", 6].read_backs == 0
    assert per_step["bare"] > 200  # the network's forward and backward really were counted
    assert per_step["force"] <= 1.05 * per_step["bare"], per_step


def test_the_cpu_path_reads_back_every_step_which_is_what_the_gpu_interval_avoids():
    """The counter sees read-backs: at the CPU's interval each step reads the two sums back."""
    model, enforcer, optimizer, batches = resnet18_setup()
    counts = OpCounter()
    with counts:
        train_epoch(model, batches[:3], optimizer, enforcer, device=CPU, sync_every=sync_interval(CPU))
    assert counts.read_back_names == {"_local_scalar_dense": 2 * 3 + 2}  # every step, and the final sync


def test_evaluation_reads_back_once_at_the_end_not_per_batch():
    """The trainer's evaluation of an in-memory split (batched on the device, no DataLoader): the
    same read-backs for 1 batch as for 6, the three totals at the end."""
    settings = complete_settings(TrainSettings(epochs=1, batch_size=10, save_every=0), "synthetic")
    model = tiny_convnet()
    trainer = Trainer(model, random_masks(model, 0.5), array_splits(), settings, seed=0, device=CPU)
    read_backs, ops = {}, {}
    for batch in (12, 2):  # the 12 test images in 1 batch, then in 6
        trainer.eval_batch_size = batch
        counts = OpCounter()
        with counts:
            metrics = trainer._evaluate("test", 1)
        assert metrics.samples == 12
        read_backs[batch], ops[batch] = counts.read_back_names, counts.ops
    assert read_backs[12] == read_backs[2]
    assert sum(read_backs[2].values()) == 3  # the loss sum, top-1 and top-k counts
    assert ops[2] > ops[12]  # six batches really were evaluated


@pytest.mark.parametrize("batches", [1, 5])
def test_evaluate_reads_back_three_totals_whatever_the_number_of_batches(batches):
    model = tiny_convnet().eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(batches)]
    counts = OpCounter()
    with counts:
        metrics = evaluate(model, data, CPU)
    assert metrics.samples == 4 * batches
    assert counts.read_back_names == {"_local_scalar_dense": 3}
