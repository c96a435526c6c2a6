"""Dataset factory: dataset name -> train/val/test datasets, normalisation, augmentation, loaders.

One module per concern, as in ``pruning/`` and ``training/``:

- ``types``: DatasetInfo, DatasetSpec, DataSplits (no behaviour);
- ``registry``: the ``DATASETS`` registry, the data directory, ``load_datasets``;
- ``readers/``: one module per file format (CIFAR binary, MNIST idx, SVHN, image folders, digits,
  synthetic), each with its folder layout in its docstring;
- ``arrays``: in-memory datasets (one uint8 tensor per split, transformed batch by batch);
- ``transforms``: crop, flip and normalisation, per image and per batch;
- ``loaders``: ``make_loader`` and pruning's ``BatchStream``;
- ``download``: fetching files, the lazy torchvision import, one-line file errors.

Every dataset lives in its own folder under the data directory (``--data-dir``, default
``$FORCE_DATA`` or ``~/.cache/force-cli/data``).

Readers: torchvision's where they do the same job without unpickling anything (MNIST's idx
reader, the image-folder scan and decoder, every download); force-cli's own where torchvision's
would not (CIFAR: torchvision reads the pickled python batches, force-cli the binary ones; SVHN:
torchvision's class hashes the whole file on every load and refuses any other copy). Each reader's
docstring says which and why. Nothing is ever unpickled.
"""

from force_cli.data.loaders import BatchStream, make_loader
from force_cli.data.readers.synthetic import SYNTHETIC_TEST_SIZE, SYNTHETIC_TRAIN_SIZE, SyntheticDataset
from force_cli.data.registry import DATASETS, dataset_info, dataset_names, default_data_dir, load_datasets
from force_cli.data.types import DatasetInfo, DatasetSpec, DataSplits

__all__ = [
    "BatchStream", "make_loader", "SYNTHETIC_TEST_SIZE", "SYNTHETIC_TRAIN_SIZE", "SyntheticDataset",
    "DATASETS", "dataset_info", "dataset_names", "default_data_dir", "load_datasets",
    "DatasetInfo", "DatasetSpec", "DataSplits",
]
