"""Decode a PNG into a numpy array with zlib alone (tests only: no imaging library needed)."""
from __future__ import annotations

import struct
import zlib

import numpy as np


def read_png(path):
    """(height, width, 3|4) uint8 array of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes)."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"{path}: only 8-bit RGB/RGBA non-interlaced PNGs are supported")
    channels = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, 1 + width * channels)
    # Each pixel depends on its left (a), upper (b) and upper-left (c) neighbours, zero outside the
    # image: undo the row filters one anti-diagonal at a time, all pixels of a diagonal at once. With
    # a zero row and column in front, a diagonal is a strided slice of the flat pixel array.
    stride = width + 1
    deltas = np.zeros(((height + 1) * stride, channels), np.int32)
    deltas.reshape(height + 1, stride, channels)[1:, 1:] = raw[:, 1:].reshape(height, width, channels)
    filters = np.zeros((height + 1) * stride, np.int32)
    filters.reshape(height + 1, stride)[1:, 1:] = raw[:, :1]
    out = np.zeros_like(deltas)
    for k in range(height + width - 1):
        first, last = max(0, k - width + 1), min(height, k + 1) - 1
        start, stop = (first + 1) * stride + k - first + 1, (last + 1) * stride + k - last + 2
        a = out[start - 1:stop - 1:width]
        b = out[start - stride:stop - stride:width]
        c = out[start - stride - 1:stop - stride - 1:width]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        f = filters[start:stop:width][:, None]
        predicted = np.select([f == 1, f == 2, f == 3, f == 4], [a, b, (a + b) // 2, paeth], 0)
        out[start:stop:width] = (deltas[start:stop:width] + predicted) % 256
    return out.reshape(height + 1, stride, channels)[1:, 1:].astype(np.uint8)
