"""Which channels of each tensor the shrunk network must keep.

For every value the network computes (``graph.Node`` outputs), one flag per channel (per feature
after a flatten):

  * varying: the channel depends on the input through kept weights (forward pass). A channel that
    does not is a constant, the same for every input in eval mode, and folds into the next layer;
  * used: the output depends on the channel through kept weights (backward pass);
  * live = varying and used;
  * kept = live, closed over ties: channels that one operation lines up with each other (the two
    sides of an addition and its result, the input and output of a ReLU or a pool, the pieces of a
    concatenation, a channel and its features after a flatten) are kept all or none. So a channel
    of a residual stream is kept when any branch needs it, and an addition never has to re-index.

The input and the output keep every channel: the shrunk network takes the same input and gives
every logit. A value left with no channel keeps its first one (PyTorch's convolutions mishandle
tensors of zero channels); that channel is computed exactly like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from force_cli.shrink.graph import MIXING, PER_CHANNEL, Node


@dataclass
class Channels:
    varying: list[torch.Tensor]
    used: list[torch.Tensor]
    kept: list[torch.Tensor]


@dataclass
class Tie:
    """Channel ``c`` of value ``dst`` is channel ``source[c]`` of value ``src`` (-1: none, a padded zero)."""

    src: int
    dst: int
    source: torch.Tensor


def connectivity(mask: torch.Tensor) -> torch.Tensor:
    """(out, in) bool: whether any kept weight joins input channel i to output channel o."""
    return mask.reshape(mask.shape[0], mask.shape[1], -1).any(dim=2)


def channel_padding(pad: list[int], ndim: int) -> tuple[int, int]:
    """Zeros F.pad adds before and after the channels (dimension 1) of an ``ndim`` tensor."""
    k = 2 * (ndim - 2)  # F.pad pads the last dimension first
    return (pad[k], pad[k + 1]) if len(pad) > k else (0, 0)


def ties(nodes: list[Node], shapes: list[tuple[int, ...]]) -> list[Tie]:
    widths = [s[1] for s in shapes]
    out = []
    for i, node in enumerate(nodes):
        if node.kind in PER_CHANNEL or node.kind in ("add", "output"):
            out += [Tie(j, i, torch.arange(widths[i])) for j in node.inputs]
        elif node.kind == "cat":
            offset = 0
            for j in node.inputs:
                source = torch.arange(widths[i]) - offset
                source[(source < 0) | (source >= widths[j])] = -1
                out.append(Tie(j, i, source))
                offset += widths[j]
        elif node.kind == "pad":
            (j,) = node.inputs
            before, _ = channel_padding(node.params["pad"], len(shapes[j]))
            source = torch.arange(widths[i]) - before
            source[(source < 0) | (source >= widths[j])] = -1
            out.append(Tie(j, i, source))
        elif node.kind == "flatten":
            (j,) = node.inputs
            out.append(Tie(j, i, torch.arange(widths[i]) // (widths[i] // widths[j])))
    return out


def _gather(flags: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Flags of the destination channels that have a source channel (False for -1)."""
    return torch.where(source >= 0, flags[source.clamp(min=0)], torch.zeros((), dtype=torch.bool))


def _scatter(flags: torch.Tensor, source: torch.Tensor, width: int) -> torch.Tensor:
    """Per source channel: whether any destination channel mapped to it is flagged."""
    hits = torch.zeros(width, dtype=torch.int64)
    valid = source >= 0
    hits.index_add_(0, source[valid], flags[valid].to(torch.int64))
    return hits > 0


def analyse(nodes: list[Node], shapes: list[tuple[int, ...]], masks: dict[str, torch.Tensor],
            remove: bool = True) -> Channels:
    """Varying, used and kept channels of every value (``shapes``: each value's shape, batch first).

    ``remove=False`` keeps every channel (the dense network as a program, for comparisons)."""
    n = len(nodes)
    widths = [s[1] for s in shapes]
    links = ties(nodes, shapes)
    into: list[list[Tie]] = [[] for _ in range(n)]
    for tie in links:
        into[tie.dst].append(tie)
    joins = {i: connectivity(masks[node.weight]) for i, node in enumerate(nodes) if node.kind in MIXING}

    varying = [torch.zeros(w, dtype=torch.bool) for w in widths]
    varying[0][:] = True
    for i, node in enumerate(nodes):
        if node.kind in MIXING:
            varying[i] = (joins[i].to(torch.float32) @ varying[node.inputs[0]].to(torch.float32)) > 0
        else:
            for tie in into[i]:
                varying[i] |= _gather(varying[tie.src], tie.source)

    used = [torch.zeros(w, dtype=torch.bool) for w in widths]
    used[-1][:] = True
    for i in range(n - 1, 0, -1):
        node = nodes[i]
        if node.kind in MIXING:
            j = node.inputs[0]
            used[j] |= (joins[i].to(torch.float32).t() @ used[i].to(torch.float32)) > 0
        else:
            for tie in into[i]:
                used[tie.src] |= _scatter(used[i], tie.source, widths[tie.src])

    kept = [v & u if remove else torch.ones_like(v) for v, u in zip(varying, used)]
    kept[0][:] = True
    kept[-1][:] = True
    while True:
        _close(kept, links, widths)
        empty = [i for i, k in enumerate(kept) if not k.any()]
        if not empty:
            return Channels(varying, used, kept)
        for i in empty:
            kept[i][0] = True


def _close(kept: list[torch.Tensor], links: list[Tie], widths: list[int]) -> None:
    """Spread kept flags over ties, both ways, until nothing changes."""
    changed = True
    while changed:
        changed = False
        for tie in links:
            forward = kept[tie.dst] | _gather(kept[tie.src], tie.source)
            backward = kept[tie.src] | _scatter(kept[tie.dst], tie.source, widths[tie.src])
            if not torch.equal(forward, kept[tie.dst]) or not torch.equal(backward, kept[tie.src]):
                kept[tie.dst], kept[tie.src] = forward, backward
                changed = True
