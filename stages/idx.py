"""The IDX file format of the original MNIST files (LeCun et al., yann.lecun.com/exdb/mnist).

Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then
each dimension as a big-endian uint32; the data follow in row-major order.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from stages.errors import DataError
from stages.fsutil import write_bytes

UBYTE = 0x08


def encode_idx(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, UBYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> None:
    write_bytes(path, encode_idx(array))


def read_idx(path: str | Path, shape_tail: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file; refuse a wrong magic number, dimensions or size.

    shape_tail: the dimensions after the first that the file must have, e.g. (28, 28) for
    images and () for labels.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: missing (run the download stage first)") from None
    if len(data) < 4:
        raise DataError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    zero1, zero2, dtype, ndim = struct.unpack(">BBBB", data[:4])
    if zero1 or zero2 or dtype != UBYTE or not 1 <= ndim <= 4:
        raise DataError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()} "
            f"(expected 0x000008NN: unsigned bytes, NN dimensions)"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    if shape_tail is not None and tuple(shape[1:]) != tuple(shape_tail):
        raise DataError(f"{path}: dimensions {shape}, expected (N, {', '.join(map(str, shape_tail))})"
                        .replace(", )", ")"))
    expected = header_size + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise DataError(f"{path}: {len(data)} bytes, but its header {shape} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)
