"""Dataset factory: dataset name -> train/val/test datasets, normalisation, augmentation, loaders.

One module per concern, as in ``pruning/`` and ``training/``:

- ``names``: how a dataset is named and split, without torch;
- ``types``: DatasetInfo, DatasetSpec, TrainDefaults, DataSplits (no behaviour, no torch);
- ``catalog``: the ``DATASETS`` registry, each dataset with its reader and training defaults,
  without torch (for ``--help`` and name errors);
- ``holdout``: the validation split that training holds out and pruning never draws from;
- ``registry``: the data directory, ``dataset_info``, ``load_datasets``;
- ``readers/``: one module per file format (CIFAR binary, MNIST idx, SVHN, image folders, digits,
  synthetic), each with its folder layout in its docstring;
- ``arrays``: in-memory datasets (one uint8 tensor per split, transformed batch by batch);
- ``transforms``: crop, flip and normalisation, per image and per batch;
- ``loaders``: ``make_loader`` and pruning's ``BatchStream``;
- ``download``: fetching files, the lazy torchvision import, one-line file errors.

Every dataset lives in its own folder under the data directory (``--data-dir``, default
``$FORCE_DATA`` or ``~/.cache/force-cli/data``).

The names below load their submodule on first use (``force_cli.lazy``), so that ``names`` imports
without torch.

Readers: torchvision's where they do the same job without unpickling anything (MNIST's idx
reader, the image-folder scan and decoder, every download); force-cli's own where torchvision's
would not (CIFAR: torchvision reads the pickled python batches, force-cli the binary ones; SVHN:
torchvision's class hashes the whole file on every load and refuses any other copy). Each reader's
docstring says which and why. Nothing is ever unpickled.
"""

from force_cli.lazy import lazy_exports

_EXPORTS = {
    "BatchStream": "loaders", "make_loader": "loaders",
    "SYNTHETIC_TEST_SIZE": "readers.synthetic", "SYNTHETIC_TRAIN_SIZE": "readers.synthetic",
    "SyntheticDataset": "readers.synthetic",
    "DATASETS": "catalog", "dataset_info": "registry", "dataset_names": "catalog", "train_defaults": "catalog",
    "default_data_dir": "registry", "load_datasets": "registry",
    "DatasetInfo": "types", "DatasetSpec": "types", "DataSplits": "types", "TrainDefaults": "types",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
