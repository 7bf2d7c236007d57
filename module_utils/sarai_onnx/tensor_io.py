"""Tensor data one chunk at a time: read a source tensor, append tensors to one output data file.

The streaming engines (stream_int8, stream_fp16) never hold more than one chunk of one tensor:
they read a source tensor from its external data file by offset, transform a chunk, and append
it to the output `<model>.data`. The files they write are laid out the way onnx.save_model lays
out what onnxruntime's engines save, so both engines' releases can be compared byte for byte.
"""

import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from .errors import SaraiError
from .model import external_info

CHUNK_BYTES = 16 << 20  # source bytes per chunk: the transforms make ~4 temporaries of this size
_BYTES_OVERHEAD = sys.getsizeof(b"")


def goes_external(nbytes, size_threshold):
    """onnx's rule (convert_model_to_external_data): raw_data leaves the graph when
    sys.getsizeof(raw_data) >= size_threshold, i.e. counting the bytes object's own header."""
    return _BYTES_OVERHEAD + nbytes >= size_threshold


def is_external(tensor):
    return tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL


class SourceTensor:
    """One tensor of the source model, read from its external data file (by offset) or its proto."""

    def __init__(self, proto, base_dir):
        # A copy: the graph's own proto is pointed at the output file once it is written, and a
        # weight kept in float and also quantized is read twice.
        self.proto = TensorProto()
        self.proto.CopyFrom(proto)
        self.name = proto.name
        self.dims = tuple(proto.dims)
        self.size = math.prod(self.dims)
        self.dtype = np.dtype(helper.tensor_dtype_to_np_dtype(proto.data_type)).newbyteorder("<")
        self.nbytes = self.size * self.dtype.itemsize
        self.path = None
        if is_external(proto):
            location, self.offset, length = external_info(proto)
            self.path = os.path.join(base_dir, location)
            if length and length != self.nbytes:
                raise SaraiError(f"tensor {self.name} declares {length} bytes of external data but its shape "
                                 f"{list(self.dims)} needs {self.nbytes}: the source model is corrupt")

    def read(self, start=0, count=None):
        """Elements [start, start + count) in C order, as a flat array."""
        count = self.size - start if count is None else count
        if self.path is None:  # held in the graph: already in memory
            return numpy_helper.to_array(self.proto).reshape(-1)[start:start + count]
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * self.dtype.itemsize)
            data = np.fromfile(fh, dtype=self.dtype, count=count)
        if data.size != count:
            raise SaraiError(f"external data of tensor {self.name} in {self.path} ends early: the file is "
                             "truncated, copy the source model again")
        return data

    def chunks(self, row_size=None, chunk_bytes=None):
        """The values in C order, about chunk_bytes at a time: flat arrays, or 2-D arrays of whole
        rows of `row_size` elements when given (at least one row per chunk)."""
        return _chunks(self.read, self.size, self.dtype.itemsize, row_size, chunk_bytes)

    def raw_bytes_chunks(self, chunk_bytes=None):
        """The tensor's bytes as stored (any dtype), for copying it unchanged."""
        if self.path is None:
            yield self.proto.raw_data
            return
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            left = self.nbytes
            while left:
                block = fh.read(min(chunk_bytes or CHUNK_BYTES, left))
                if not block:
                    raise SaraiError(f"external data of tensor {self.name} in {self.path} ends early: the "
                                     "file is truncated, copy the source model again")
                left -= len(block)
                yield block


class TransposedTensor:
    """A 2-D source tensor seen transposed (onnxruntime turns Gemm transB=1 weights into B.T).

    Reading it needs the whole source tensor in memory once: a transposed row is a strided column.
    """

    def __init__(self, source):
        self.source = source
        self.name = source.name
        self.dims = tuple(reversed(source.dims))
        self.size, self.dtype, self.nbytes = source.size, source.dtype, source.nbytes

    def chunks(self, row_size=None, chunk_bytes=None):
        flat = np.ascontiguousarray(self.source.read().reshape(self.source.dims).T).reshape(-1)
        return _chunks(lambda start, count: flat[start:start + count], self.size, self.dtype.itemsize,
                       row_size, chunk_bytes)

    def raw_bytes_chunks(self, chunk_bytes=None):
        for chunk in self.chunks(chunk_bytes=chunk_bytes):
            yield chunk.tobytes()


def _chunks(read, size, itemsize, row_size, chunk_bytes):
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    if row_size is None:
        step = max(1, chunk_bytes // itemsize)
        for start in range(0, size, step):
            yield read(start, min(step, size - start))
        return
    rows = size // row_size if row_size else 0
    step = max(1, chunk_bytes // max(1, row_size * itemsize))
    for first in range(0, rows, step):
        n = min(step, rows - first)
        yield read(first * row_size, n * row_size).reshape(n, row_size)


class DataFileWriter:
    """Appends tensor bytes to one external data file and points TensorProtos at them.

    The file is created with the first tensor: like onnx.save_model, no external tensor, no file.
    """

    def __init__(self, path):
        self.path = path
        self.location = os.path.basename(path)
        self.fh = None

    def append(self, tensor, chunks):
        """Write the byte chunks as `tensor`'s data; returns the number of bytes written."""
        if self.fh is None:
            self.fh = open(self.path, "wb")
        offset = self.fh.tell()
        for chunk in chunks:
            self.fh.write(chunk)
        length = self.fh.tell() - offset
        tensor.raw_data = b""  # set_external_data insists on the field; it is cleared right after
        set_external_data(tensor, self.location, offset, length)
        tensor.ClearField("raw_data")
        return length

    def close(self):
        if self.fh is not None:
            self.fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def set_inline(tensor, data):
    """Hold `data` in the graph, as onnx.load leaves a tensor it read from an external file."""
    del tensor.external_data[:]
    tensor.raw_data = data
    tensor.data_location = TensorProto.DEFAULT


def write_copy(tensor, source, writer, size_threshold):
    """A source tensor copied unchanged: into the data file, or inline when under size_threshold."""
    if goes_external(source.nbytes, size_threshold):
        writer.append(tensor, source.raw_bytes_chunks())
    else:
        set_inline(tensor, b"".join(source.raw_bytes_chunks()))
        if isinstance(source, TransposedTensor):  # a new tensor (numpy_helper.from_array) names no location
            tensor.ClearField("data_location")


def load_small_external(model, base_dir, size_threshold):
    """Read every external tensor that would stay inside the graph on save (under size_threshold).

    onnxruntime's engines load the whole model and save it again; tensors this small come back
    inline. Reading them here (a few KB each) gives the streaming graph the same state.
    """
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if is_external(tensor):
            source = SourceTensor(tensor, base_dir)
            if not goes_external(source.nbytes, size_threshold):
                set_inline(tensor, b"".join(source.raw_bytes_chunks()))


def load_attribute_tensors(model, base_dir):
    """Read external tensors held in node attributes (Constant values): engines load them whole."""
    for tensor in onnx.external_data_helper._get_attribute_tensors(model):
        if is_external(tensor):
            set_inline(tensor, b"".join(SourceTensor(tensor, base_dir).raw_bytes_chunks()))
