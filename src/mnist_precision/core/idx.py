"""The IDX file format of the MNIST distribution, parsed into tensors.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), one big-endian uint32 per dimension, then the data. MNIST uses
only unsigned bytes (type code 0x08).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import torch

from mnist_precision.base.errors import UserError

UBYTE = 0x08


class IdxError(UserError, ValueError):
    """The bytes are not a well-formed IDX file of unsigned bytes."""


def parse_idx(data: bytes) -> torch.Tensor:
    """Return the IDX payload as a uint8 tensor of the shape its header gives."""
    if len(data) < 4:
        raise IdxError(f"too short for an IDX header ({len(data)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != UBYTE or ndim == 0:
        raise IdxError(f"not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"header declares {ndim} dimensions but the file has {len(data)} bytes")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise IdxError(f"shape {shape} needs {expected} bytes, the file has {len(data)}")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def read_idx(path: str | Path) -> torch.Tensor:
    return parse_idx(Path(path).read_bytes())
