"""force-cli: prune neural networks at initialization (FORCE, Iterative SNIP and baselines)."""

__version__ = "0.1.0"
FORMAT_VERSION = "force-ckpt/1"
