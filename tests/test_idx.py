import struct

import pytest
import torch

from mnist_precision.core.idx import IdxError, parse_idx


def idx_bytes(shape, payload: bytes) -> bytes:
    return struct.pack(">HBB", 0, 0x08, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + payload


def test_parses_images_into_the_header_shape():
    payload = bytes(range(2 * 3 * 4))
    tensor = parse_idx(idx_bytes((2, 3, 4), payload))
    assert tensor.shape == (2, 3, 4)
    assert tensor.dtype == torch.uint8
    assert tensor[1, 2, 3].item() == 23


def test_parses_labels():
    assert parse_idx(idx_bytes((3,), b"\x07\x02\x01")).tolist() == [7, 2, 1]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "too short"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 8, "not an IDX file"),  # a gzip header
        (struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\x00" * 4, "not an IDX file"),  # float32
        (idx_bytes((2, 2), b"\x00" * 3), "needs 16 bytes, the file has 15"),  # truncated
        (idx_bytes((2, 2), b"\x00" * 5), "needs 16 bytes, the file has 17"),  # trailing data
        (struct.pack(">HBB", 0, 0x08, 3) + b"\x00" * 4, "declares 3 dimensions"),
    ],
)
def test_refuses_malformed_files(data, message):
    with pytest.raises(IdxError, match=message):
        parse_idx(data)
