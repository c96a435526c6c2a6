"""Real speed from sparsity: the smallest dense network computing what a masked one computes.

    from force_cli.shrink.rewrite import shrink_model
    from force_cli.shrink import ShrunkNet
    shrunk = shrink_model(model, masks, (3, 32, 32))           # program + tensors
    net = ShrunkNet(shrunk.program, shrunk.tensors).eval()     # an nn.Module

Modules: ``graph`` (torch.fx trace into channel-level ops), ``liveness`` (which channels each
tensor keeps), ``rewrite`` (the shrunk program, constants folded), ``program`` (its file format,
``force-shrunk/1``, and the module that runs it), ``summary`` (widths and costs per layer),
``job`` (checkpoint to file), ``sparse``, ``bench`` and ``export`` (CSR layers, timing, the
measured sparse export). This package imports only the file format, so that ``force_cli.export``,
``evaluation`` and ``inspection`` can recognise a shrunk file without importing the rest.
"""

from force_cli.shrink.program import FORMAT, ShrunkNet, is_shrunk, load_shrunk, save_shrunk

__all__ = ["FORMAT", "ShrunkNet", "is_shrunk", "load_shrunk", "save_shrunk"]
