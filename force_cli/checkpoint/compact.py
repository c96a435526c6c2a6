"""The compact variant of the checkpoint format (``force-ckpt-compact/1``).

A dense checkpoint stores every pruned weight as a zero and every mask as one byte per weight.
The compact variant stores, for each pruned weight ``NAME`` (each ``mask:NAME`` of the dense file):
  * ``values:NAME``: the kept values only, in row-major order, in the weight's dtype;
  * the mask, whichever of these two is smaller for that tensor:
      - ``bits:NAME``: uint8, ``ceil(n/8)`` bytes, bit ``i`` of byte ``j`` (little bit order) is
        element ``8j+i``; padding bits are zero;
      - ``gaps:NAME``: uint8 or uint16 gap codes. With ``E`` the dtype's largest value, a code
        ``c < E`` means "skip ``c`` pruned positions, then one kept one", a code ``E`` means "skip
        ``E`` pruned positions". After the last kept weight, codes ``E`` cover the tail until fewer
        than ``E`` positions are left, so the stream determines the tensor's length (to within ``E``).
        One byte per kept weight at 99 % sparsity, where indices would take four.
  * the string metadata field ``compact``: JSON ``{NAME: {"shape": [...], "kept": k, "mask": "bits"|"gaps"}}``.
Everything else (unpruned entries, training state, metadata) is stored as in ``force-ckpt/1``.

Reading an untrusted file: a few bytes of gap codes may stand for millions of pruned weights, so
the declared shapes are what bounds the memory. ``declared_shapes`` gives them from the metadata
alone, for the reader to compare with the model built on the meta device before anything is
allocated (``restore.load_for_model``); every tensor's dtype and length is checked against
``compact`` through the safetensors header before it is read; dense weights that would not fit in
memory, at what decoding really costs per element (the value's bytes plus
``MASK_BYTES_PER_ELEMENT``), are refused up front;
a dense weight is allocated only once its mask stream has been shown to account for its declared
number of elements (to within one gap code).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from force_cli.errors import CheckpointError

FORMAT = "force-ckpt-compact/1"
LAYOUT_FIELD = "compact"
MASK_PREFIX = "mask:"  # as in the dense format (format.MASK_PREFIX)
VALUES_PREFIX = "values:"
BITS_PREFIX = "bits:"
GAPS_PREFIX = "gaps:"
PREFIXES = (VALUES_PREFIX, BITS_PREFIX, GAPS_PREFIX)
GAP_DTYPES = {"U8": (torch.uint8, 255), "U16": (torch.uint16, 65535)}
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # safetensors dtype -> bytes per value
#: What decoding holds per declared element besides the weight's own value: the boolean mask (the
#: bit-packed one is unpacked in place into it). Kept values go in with masked_scatter, which
#: needs no index tensor (an int64 position per kept weight cost 8 more bytes).
MASK_BYTES_PER_ELEMENT = 1


def _gap_codes(positions: torch.Tensor, n: int, escape: int) -> torch.Tensor:
    """The gap-code stream (see module docstring) of sorted kept ``positions`` in a tensor of ``n``."""
    previous = torch.cat([torch.tensor([-1]), positions[:-1]])
    gaps = positions - previous - 1
    per_weight = gaps // escape + 1  # escapes, then the remainder code
    codes = torch.full((int(per_weight.sum()),), escape, dtype=torch.int64)
    codes[torch.cumsum(per_weight, 0) - 1] = gaps % escape
    tail = n - (int(positions[-1]) + 1 if len(positions) else 0)
    return torch.cat([codes, torch.full((tail // escape,), escape, dtype=torch.int64)])


def _encode_mask(mask: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The smallest of the bit-packed mask and the uint8 / uint16 gap codes."""
    flat = mask.flatten()
    n = flat.numel()
    options = [("bits", torch.from_numpy(np.packbits(flat.numpy(), bitorder="little")))]
    positions = torch.nonzero(flat).flatten()
    for dtype, escape in GAP_DTYPES.values():  # uint8 wins near 1 % density, uint16 below ~0.3 %
        options.append(("gaps", _gap_codes(positions, n, escape).to(dtype)))
    return min(options, key=lambda o: o[1].numel() * o[1].element_size())


def encode(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Turn the tensors and header of a dense checkpoint into those of a compact one (lossless)."""
    out, layout = {}, {}
    for key, value in tensors.items():
        if not key.startswith(MASK_PREFIX):
            out[key] = value
    for key, mask in tensors.items():
        if not key.startswith(MASK_PREFIX):
            continue
        name = key[len(MASK_PREFIX):]
        weight = out.pop(name)
        kind, stream = _encode_mask(mask)
        out[VALUES_PREFIX + name] = weight.flatten()[mask.flatten()].contiguous()
        out[(BITS_PREFIX if kind == "bits" else GAPS_PREFIX) + name] = stream.contiguous()
        layout[name] = {"shape": list(weight.shape), "kept": int(mask.sum()), "mask": kind}
    return out, header | {"format": FORMAT, LAYOUT_FIELD: json.dumps(layout, sort_keys=True)}


def _corrupt(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"'{path}': {what}; the file is corrupt, re-create it")


def declared_shapes(raw: dict[str, str], path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every weight the compact layout declares, from the metadata alone (nothing read)."""
    return {name: tuple(entry["shape"]) for name, entry in _layout(raw, path).items()}


def _layout(raw: dict[str, str], path: Path) -> dict[str, dict]:
    try:
        layout = json.loads(raw[LAYOUT_FIELD])
    except (KeyError, ValueError, RecursionError):  # missing, bad JSON, an integer of too many digits, too deep
        raise _corrupt(path, f"the '{LAYOUT_FIELD}' metadata field is missing or not JSON") from None
    if not isinstance(layout, dict):
        raise _corrupt(path, f"the '{LAYOUT_FIELD}' metadata field is not a mapping")
    for name, entry in layout.items():
        ok = (isinstance(entry, dict) and entry.get("mask") in ("bits", "gaps")
              and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("kept"), int) and not isinstance(entry["kept"], bool)
              and 0 <= entry["kept"] <= math.prod(entry["shape"]))
        if not ok:
            raise _corrupt(path, f"the compact layout of '{name}' is malformed")
    return layout


def _header_of(f, keys: set[str], key: str, path: Path) -> tuple[str, list[int]]:
    """dtype and shape of ``key`` from the safetensors header, without reading the tensor."""
    if key not in keys:
        raise _corrupt(path, f"tensor '{key}' is missing")
    part = f.get_slice(key)
    return part.get_dtype(), list(part.get_shape())


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: no limit known
        return 1 << 62


def _check_memory(layout: dict[str, dict], value_bytes: dict[str, int], path: Path) -> None:
    """Refuse, before allocating, dense weights and masks larger than this machine's memory.

    A few bytes of gap codes may legitimately stand for millions of pruned weights (an emptied
    layer), so no ratio to the file size can tell a crafted file from a real one; memory can.
    """
    declared = sum(math.prod(e["shape"]) * (value_bytes[name] + MASK_BYTES_PER_ELEMENT)
                   for name, e in layout.items())
    available = _memory_bytes()
    if declared > available:
        raise CheckpointError(f"'{path}' declares {declared / 2**30:.1f} GiB of dense weights, more than this machine's "
                              f"{available / 2**30:.1f} GiB of memory; the file is corrupt or for a larger machine")


def decode(f, raw: dict[str, str], path: Path) -> tuple[dict, dict, list[str]]:
    """Read the pruned weights of an open compact file: (weights, masks, the keys left to read as dense)."""
    layout = _layout(raw, path)
    state, masks, used = {}, {}, set()
    keys = set(f.keys())
    value_bytes = {}
    for name, entry in layout.items():  # every header first: nothing is allocated before the memory check
        if ":" in name or name in keys:
            raise _corrupt(path, f"the compact layout names '{name}', a reserved name or one also stored densely")
        values_key = VALUES_PREFIX + name
        dtype, vshape = _header_of(f, keys, values_key, path)
        if dtype not in FLOAT_DTYPES or vshape != [entry["kept"]]:
            raise _corrupt(path, f"'{values_key}' is {dtype} {vshape}, the layout says {entry['kept']} float values")
        value_bytes[name] = FLOAT_DTYPES[dtype]
    _check_memory(layout, value_bytes, path)
    for name, entry in layout.items():
        shape, kept, n = entry["shape"], entry["kept"], math.prod(entry["shape"])
        values_key = VALUES_PREFIX + name
        if entry["mask"] == "bits":
            key = BITS_PREFIX + name
            dtype, mshape = _header_of(f, keys, key, path)
            if dtype != "U8" or mshape != [(n + 7) // 8]:
                raise _corrupt(path, f"'{key}' is {dtype} {mshape}, the layout says {(n + 7) // 8} bytes")
            bits = np.unpackbits(f.get_tensor(key).numpy(), bitorder="little")
            if bits[n:].any() or int(bits.sum(dtype=np.int64)) != kept:
                raise _corrupt(path, f"the mask of '{name}' does not keep the {kept} weights its layout says")
            flat_mask = torch.from_numpy(bits[:n].view(np.bool_))  # 0/1 bytes: a bool view, no copy
        else:
            key = GAPS_PREFIX + name
            dtype, mshape = _header_of(f, keys, key, path)
            if dtype not in GAP_DTYPES or len(mshape) != 1 or mshape[0] < kept:
                raise _corrupt(path, f"'{key}' is {dtype} {mshape}, the layout says at least {kept} gap codes")
            escape = GAP_DTYPES[dtype][1]
            codes = f.get_tensor(key).to(torch.int64)
            is_escape = codes == escape
            covered = torch.cumsum(torch.where(is_escape, escape, codes + 1), 0)
            positions = covered[~is_escape] - 1
            end = int(covered[-1]) if len(covered) else 0
            if len(positions) != kept or not 0 <= n - end < escape:
                raise _corrupt(path, f"the gap codes of '{name}' do not describe {kept} kept weights among {n}")
            flat_mask = torch.zeros(n, dtype=torch.bool)  # n is now known to be within `escape` of the stream
            flat_mask[positions] = True
        values = f.get_tensor(values_key)
        weight = torch.zeros(n, dtype=values.dtype)
        weight.masked_scatter_(flat_mask, values)  # the kept values in row-major order, no index tensor
        state[name] = weight.reshape(shape)
        masks[name] = flat_mask.reshape(shape)
        used.update({values_key, key})
    rest = sorted(keys - used)
    stray = [k for k in rest if k.startswith(PREFIXES + (MASK_PREFIX,))]
    if stray:
        raise _corrupt(path, f"tensor '{stray[0]}' is not described by the compact layout")
    return state, masks, rest

