"""Image transforms: uint8 CHW tensors in, normalised float32 CHW out.

The 32x32 and 64x64 datasets use the small tensor transforms below (random crop with padding,
horizontal flip, normalisation), which need no torchvision and also apply to a whole batch at
once (``Compose.batch``), on whatever device the batch is; ImageNet-style folders use
torchvision's ``transforms.v2``. Ours are kept because torchvision's v2 transforms draw one
crop and one flip per call: a whole batch would get the same crop.

Randomness: augmentation draws from torch's global RNG, like torchvision transforms, so
``DataLoader`` workers (seeded from the loader's generator) are reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from force_cli.data import download
from force_cli.data.types import DatasetInfo


class Compose:
    def __init__(self, *steps):
        self.steps = steps

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x

    def batch(self, x: Tensor) -> Tensor:
        """The same as ``torch.stack([self(xi) for xi in x])``, bit for bit, as whole-batch tensor
        operations: the random parameters are drawn sample by sample in the per-sample order (so
        torch's RNG advances exactly as it does per sample), then applied to the whole batch."""
        shape = x.shape[1:]
        params = [[step.draw(shape) for step in self.steps] for _ in range(len(x))]
        for k, step in enumerate(self.steps):
            x = step.apply(x, [p[k] for p in params])
            shape = x.shape[1:]
        return x


class RandomCrop:
    """torchvision's ``RandomCrop(size, padding)``: zero padding, then a uniform random crop."""

    def __init__(self, size: int, padding: int):
        self.size, self.padding = size, padding

    def __call__(self, x: Tensor) -> Tensor:
        i, j = self.draw(x.shape)
        return self._crop(self._pad(x), i, j)

    def _pad(self, x: Tensor) -> Tensor:
        p = self.padding
        return torch.nn.functional.pad(x, (p, p, p, p)) if p else x

    def _crop(self, x: Tensor, i: int, j: int) -> Tensor:
        return x[..., i:i + self.size, j:j + self.size]

    def draw(self, shape) -> tuple[int, int]:
        h, w = shape[-2] + 2 * self.padding, shape[-1] + 2 * self.padding
        i = int(torch.randint(0, h - self.size + 1, (1,)))
        j = int(torch.randint(0, w - self.size + 1, (1,)))
        return i, j

    def apply(self, x: Tensor, offsets: list[tuple[int, int]]) -> Tensor:
        x = self._pad(x)  # slicing views then one stack: much faster than an advanced-index gather
        return torch.stack([self._crop(xi, i, j) for xi, (i, j) in zip(x, offsets)])


class RandomHorizontalFlip:
    def __call__(self, x: Tensor) -> Tensor:
        return x.flip(-1) if self.draw(x.shape) else x

    def draw(self, shape) -> bool:
        return float(torch.rand(1)) < 0.5

    def apply(self, x: Tensor, flips: list[bool]) -> Tensor:
        return torch.where(torch.tensor(flips, device=x.device).view(-1, 1, 1, 1), x.flip(-1), x)


class Normalize:
    """uint8 [0, 255] -> float32 [0, 1] -> (x - mean) / std per channel.

    Every divisor is a tensor on the images' device, never a Python number: CUDA computes a
    division by a CPU scalar as a multiplication by its reciprocal, which differs from the CPU's
    true division in the last bit of some pixels.
    """

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self._constants: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}  # per device, copied once

    def __call__(self, x: Tensor) -> Tensor:
        if x.device not in self._constants:
            scale = torch.tensor(255.0, dtype=torch.float32)
            self._constants[x.device] = tuple(t.to(x.device) for t in (scale, self.mean, self.std))
        scale, mean, std = self._constants[x.device]
        return x.to(torch.float32).div_(scale).sub_(mean).div_(std)  # in place: same values

    def __getstate__(self):  # a loader worker makes its own copies (never CUDA tensors in a pickle)
        return {**self.__dict__, "_constants": {}}

    def draw(self, shape) -> None:
        return None

    def apply(self, x: Tensor, params) -> Tensor:
        return self(x)  # broadcasts over the batch

    def batch(self, x: Tensor) -> Tensor:
        return self(x)


def tensor_transforms(info: DatasetInfo, *, crop: bool, flip: bool, augment: bool):
    """(train, test) transforms for uint8 tensor images of size ``info.image_size``."""
    test = Normalize(info.mean, info.std)
    steps = []
    if augment and crop:
        steps.append(RandomCrop(info.image_size, padding=4))
    if augment and flip:
        steps.append(RandomHorizontalFlip())
    train = Compose(*steps, test) if steps else test
    return train, test


class PILToUint8:
    def __call__(self, img) -> Tensor:
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def imagenet_transforms(info: DatasetInfo, augment: bool):
    """ImageNet recipe: RandomResizedCrop(224) + flip; test Resize(256) + CenterCrop(224)."""
    v2 = download.import_torchvision().transforms.v2
    size = info.image_size
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std),
            v2.ToPureTensor()]
    test = v2.Compose([v2.Resize(round(size * 256 / 224)), v2.CenterCrop(size), *tail])
    if not augment:
        return test, test
    return v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), *tail]), test
