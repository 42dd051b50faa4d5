"""Tensors on the wire: numpy arrays <-> TensorProto, and the PredictRequest around them.

The one place that builds and parses TensorProtos, with numpy and `contract.tfs_protos`
only. A TensorProto carries its values in one of two ways, and TF reads both:

    tensor_content   raw little-endian bytes; what `tf.make_tensor_proto` and we write
    <type>_val       one repeated field per dtype; what TF Serving writes in its replies
                     (float_val for float32, int_val for 8/16/32-bit ints, half_val for
                     float16 and bfloat16 as 16-bit patterns, string_val for strings).
                     A single value fills the whole shape, as `tf.make_ndarray` allows.

A string tensor's tensor_content is TF's string list (`string_list_bytes`): TF Serving sends
that with `--enable_serialization_as_tensor_content`, for every output, strings included.

Parsing is strict: the dtype must be the one expected, the declared shape must match the
expected one, and the values must fill that shape exactly, or a TensorError says which.

`predict_request_bytes` is the serialised PredictRequest for a client that sends the same
kind of call many times a second (the gateway): protobuf would copy the pixels three times
(into tensor_content, into the request, into the serialised bytes); here the small parts are
serialised by protobuf and the pixels are copied once, straight into the message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from contract import tfs_protos
from contract.errors import ContractError, TensorError
from contract.tfs_protos import DataType


class _Kind(NamedTuple):
    """How one dtype travels: its TF enum, our name, its wire encodings and its numpy type."""

    dtype: DataType
    name: str
    content: str  # numpy dtype of one element of tensor_content; "" = not sent that way
    field: str  # the typed *_val field
    array: str  # numpy dtype of the parsed array


_KINDS = (
    _Kind(DataType.DT_UINT8, "uint8", "|u1", "int_val", "uint8"),
    _Kind(DataType.DT_INT8, "int8", "|i1", "int_val", "int8"),
    _Kind(DataType.DT_INT16, "int16", "<i2", "int_val", "int16"),
    _Kind(DataType.DT_INT32, "int32", "<i4", "int_val", "int32"),
    _Kind(DataType.DT_INT64, "int64", "<i8", "int64_val", "int64"),
    _Kind(DataType.DT_HALF, "float16", "<f2", "half_val", "float16"),
    # numpy has no bfloat16: its 16-bit patterns are widened to float32, which is exact.
    _Kind(DataType.DT_BFLOAT16, "bfloat16", "<u2", "half_val", "float32"),
    _Kind(DataType.DT_FLOAT, "float32", "<f4", "float_val", "float32"),
    _Kind(DataType.DT_DOUBLE, "float64", "<f8", "double_val", "float64"),
    _Kind(DataType.DT_BOOL, "bool", "|b1", "bool_val", "bool"),
    _Kind(DataType.DT_STRING, "string", "", "string_val", "object"),
)
_BY_DTYPE: dict[int, _Kind] = {k.dtype: k for k in _KINDS}
_BY_NAME = {k.name: k for k in _KINDS}
DTYPE_NAMES: Mapping[DataType, str] = {k.dtype: k.name for k in _KINDS}
"""Our dtype names ("uint8", "float32", "bfloat16", "string", ...) by TF DataType."""


def dtype_name(dtype: int) -> str:
    """Our name for a DataType value; TF's own name (e.g. "DT_COMPLEX64") for the others."""
    kind = _BY_DTYPE.get(dtype)
    if kind is not None:
        return kind.name
    try:
        return DataType(dtype).name
    except ValueError:
        return f"DataType({dtype})"


def data_type(name: str) -> DataType:
    """The DataType for one of our dtype names (see DTYPE_NAMES)."""
    return _kind(name).dtype


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype `tensor_array` returns for `name` (float32 for bfloat16, object for
    string)."""
    return np.dtype(_kind(name).array)


def _kind(name: str) -> _Kind:
    kind = _BY_NAME.get(name)
    if kind is None:
        raise ContractError(f"dtype must be one of {sorted(_BY_NAME)}. Received: dtype={name!r}")
    return kind


def _shape_proto(shape: Iterable[int]) -> Any:
    proto = tfs_protos.TensorShapeProto()
    for size in shape:
        proto.dim.add(size=int(size))
    return proto


def array_tensor(array: np.ndarray) -> Any:
    """Any numeric or string numpy array -> TensorProto (tensor_content, or string_val).

    Numbers go as little-endian bytes whatever the host's order; str/bytes/object arrays go
    as string_val (str encoded as UTF-8).
    """
    array = np.asarray(array)
    if array.dtype.kind in "SUO":
        values = [_string_bytes(v) for v in array.ravel().tolist()]
        return tfs_protos.TensorProto(
            dtype=DataType.DT_STRING, tensor_shape=_shape_proto(array.shape), string_val=values
        )
    kind = _BY_NAME.get(array.dtype.name)
    if kind is None or not kind.content or kind.array != array.dtype.name:
        raise TensorError(
            f"arrays must hold strings or have one of the dtypes "
            f"{[k.name for k in _KINDS if k.array == k.name]}. Received: dtype={array.dtype}"
        )
    return tfs_protos.TensorProto(
        dtype=kind.dtype,
        tensor_shape=_shape_proto(array.shape),
        # astype is free for little-endian arrays; tobytes is then our one copy, in C order
        # even from a strided view. (protobuf keeps its own copy of the bytes it is given.)
        tensor_content=array.astype(kind.content, copy=False).tobytes(order="C"),
    )


def _string_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TensorError(
        f"string tensors hold str or bytes. Received: {type(value).__name__} {value!r}"
    )


def images_tensor(images: np.ndarray) -> Any:
    """A uint8 NHWC batch -> TensorProto, bytes copied once into tensor_content."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        dtype = getattr(images, "dtype", type(images).__name__)
        raise TensorError(f"images must be a uint8 numpy array. Received: dtype={dtype}")
    if images.ndim != 4:
        raise TensorError(
            f"images must be 4-D (batch, height, width, channels). Received: shape={images.shape}"
        )
    return array_tensor(images)


def tensor_array(
    proto: Any,
    *,
    dtype: str,
    shape: Sequence[int | None] | None = None,
    name: str = "tensor",
) -> np.ndarray:
    """A TensorProto -> a new numpy array of `numpy_dtype(dtype)`, checked first.

    `shape` is what the caller expects (None matches any size in that dimension); without it
    only the proto's own shape is used. `name` names the tensor in error messages.
    """
    kind = _kind(dtype)
    if proto.dtype != kind.dtype:
        raise TensorError(f"{name} must be {kind.name}. Received: dtype={dtype_name(proto.dtype)}")
    dims = _declared_shape(proto, name)
    if shape is not None and not _shape_matches(dims, shape):
        raise TensorError(f"{name} must have shape {tuple(shape)}. Received: shape={dims}")
    count = math.prod(dims)
    if proto.tensor_content:
        return _from_content(proto.tensor_content, kind, dims, count, name)
    values = getattr(proto, kind.field)
    if len(values) == count or (len(values) == 1 and count > 0):
        return _from_values(values, kind, count, name).reshape(dims)
    raise TensorError(
        f"{name} of shape {dims} needs {count} values in {kind.field} (or 1 to fill it). "
        f"Received: {len(values)} values"
    )


def _declared_shape(proto: Any, name: str) -> tuple[int, ...]:
    shape = proto.tensor_shape
    dims = tuple(int(d.size) for d in shape.dim)
    if shape.unknown_rank or any(d < 0 for d in dims):
        rank = "unknown" if shape.unknown_rank else len(dims)
        raise TensorError(
            f"{name} must declare a fully known shape. Received: shape={dims} rank={rank}"
        )
    return dims


def _shape_matches(dims: tuple[int, ...], expected: Sequence[int | None]) -> bool:
    return len(dims) == len(expected) and all(
        e is None or d == e for d, e in zip(dims, expected, strict=True)
    )


def _from_content(
    content: bytes, kind: _Kind, dims: tuple[int, ...], count: int, name: str
) -> np.ndarray:
    if kind.dtype == DataType.DT_STRING:
        return _string_list(content, count, name).reshape(dims)
    if not kind.content:
        raise TensorError(
            f"{name} of dtype {kind.name} must use {kind.field}, not tensor_content. "
            f"Received: {len(content)} bytes in tensor_content"
        )
    itemsize = np.dtype(kind.content).itemsize
    if len(content) != count * itemsize:
        raise TensorError(
            f"{name} of shape {dims} needs {count * itemsize} bytes of {kind.name} in "
            f"tensor_content. Received: {len(content)} bytes"
        )
    flat = np.frombuffer(content, dtype=kind.content)
    if kind.dtype == DataType.DT_BFLOAT16:
        return _widen_bfloat16(flat).reshape(dims)
    return flat.astype(kind.array).reshape(dims)  # astype copies: writable, native order


def string_list_bytes(values: Sequence[bytes]) -> bytes:
    """A string tensor's tensor_content as TF writes it (tensorflow/core/platform/
    tensor_coding.cc, EncodeStringList, which Tensor::AsProtoTensorContent uses for DT_STRING):
    every length as a varint32, then every string's bytes. TF Serving replies so with
    `--enable_serialization_as_tensor_content` (predict_util.cc, PostProcessPredictionResult)."""
    return b"".join(_varint(len(v)) for v in values) + b"".join(values)


def _string_list(content: bytes, count: int, name: str) -> np.ndarray:
    """`string_list_bytes` read back (TF's DecodeStringList): `count` strings, or TensorError."""
    sizes: list[int] = []
    pos = 0
    while len(sizes) < count and pos < len(content):
        size, shift = 0, 0
        while pos < len(content) and shift <= 28:
            byte = content[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                sizes.append(size)
                break
    if len(sizes) != count or sum(sizes) != len(content) - pos:
        raise TensorError(
            f"{name} of {count} strings in tensor_content must be TF's string list (each "
            f"length as a varint, then the bytes). Received: {len(content)} bytes that are not"
        )
    out = np.empty(count, dtype=object)
    for i, size in enumerate(sizes):
        out[i] = content[pos : pos + size]
        pos += size
    return out


def _from_values(values: Sequence[Any], kind: _Kind, count: int, name: str) -> np.ndarray:
    if kind.dtype == DataType.DT_STRING:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif kind.field == "half_val":
        bits = _checked_ints(values, np.uint16, kind, name)
        flat = _widen_bfloat16(bits) if kind.dtype == DataType.DT_BFLOAT16 else bits.view("<f2")
    elif kind.field == "int_val":
        flat = _checked_ints(values, np.dtype(kind.array), kind, name)
    else:
        flat = np.asarray(values, dtype=kind.array)  # upb's containers have a fast __array__
    if flat.size == 1 and count != 1:
        flat = np.full(count, flat[0], dtype=flat.dtype)  # TF's rule: one value fills the shape
    return flat.astype(kind.array, copy=False)


def _checked_ints(values: Sequence[int], to: Any, kind: _Kind, name: str) -> np.ndarray:
    """int32 wire values -> a narrower integer type, refusing values that do not fit."""
    wide = np.asarray(values, dtype=np.int64)
    info = np.iinfo(to)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        bad = wide[(wide < info.min) | (wide > info.max)][0]
        raise TensorError(
            f"{name} of dtype {kind.name} needs {kind.field} values in "
            f"[{info.min}, {info.max}]. Received: {int(bad)}"
        )
    return wide.astype(to)


def _widen_bfloat16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns -> float32: the bfloat16 is float32's top half."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def tensor_sig(info: Any) -> tuple[str, tuple[int | None, ...]]:
    """(dtype name, dims) of a TensorInfo; -1 dims are None, an unknown rank is ()."""
    dtype = dtype_name(info.dtype)
    if info.tensor_shape.unknown_rank:
        return dtype, ()
    return dtype, tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)


def predict_request(
    model_name: str,
    *,
    signature: str,
    inputs: Mapping[str, Any],
    output_filter: Iterable[str] = (),
    version: int | None = None,
    version_label: str | None = None,
) -> Any:
    """A PredictRequest for `model_name`'s `signature`, pinned to a version or a label (or
    neither: the server's latest). Each input TensorProto is copied in once."""
    if version is not None and version_label is not None:
        raise ContractError(
            "a request pins a version or a version label, not both. "
            f"Received: version={version}, version_label={version_label!r}"
        )
    if version is not None and version < 0:
        raise ContractError(f"version must be >= 0. Received: version={version}")
    request = tfs_protos.PredictRequest(output_filter=list(output_filter))
    spec = request.model_spec
    spec.name = model_name
    spec.signature_name = signature
    if version is not None:
        spec.version.value = version
    elif version_label is not None:
        spec.version_label = version_label
    for key, tensor in inputs.items():
        request.inputs[key].CopyFrom(tensor)
    return request


def predict_request_bytes(
    model_name: str,
    *,
    signature: str,
    inputs: Mapping[str, np.ndarray],
    output_filter: Iterable[str] = (),
    version: int | None = None,
) -> bytes:
    """The serialised `predict_request(...)` with `inputs` as tensor_content, each array
    copied once (the same message `predict_request` builds from `array_tensor`s).

    Protobuf lets a message's fields come in any order and a map's entries come as repeated
    fields, so the request is protobuf's own encoding of everything but the inputs, followed
    by one hand-framed map entry per input whose TensorProto ends with its tensor_content.
    """
    parts: list[Any] = [
        predict_request(
            model_name, signature=signature, inputs={}, output_filter=output_filter,
            version=version,
        ).SerializeToString()
    ]  # fmt: skip
    for key, array in inputs.items():
        kind = _BY_NAME.get(np.asarray(array).dtype.name)
        if kind is None or not kind.content or kind.array != kind.name:
            raise TensorError(
                f"tensor_content inputs must have one of the dtypes "
                f"{[k.name for k in _KINDS if k.content and k.array == k.name]}. "
                f"Received: {key}: dtype={np.asarray(array).dtype}"
            )
        content = np.ascontiguousarray(array, dtype=kind.content).data.cast("B")
        head = tfs_protos.TensorProto(
            dtype=kind.dtype, tensor_shape=_shape_proto(np.shape(array))
        ).SerializeToString()
        tensor_head = head + _field_head(_TENSOR_CONTENT, len(content))
        name = key.encode()
        entry_head = (
            _field_head(_MAP_KEY, len(name)) + name
            + _field_head(_MAP_VALUE, len(tensor_head) + len(content)) + tensor_head
        )  # fmt: skip
        parts += [_field_head(_PREDICT_INPUTS, len(entry_head) + len(content)), entry_head, content]
    return b"".join(parts)


# Field numbers of the hand-framed parts (tensorflow/core/framework/tensor.proto,
# tensorflow_serving/apis/predict.proto; a map entry's key is field 1, its value field 2).
_PREDICT_INPUTS = 2
_MAP_KEY, _MAP_VALUE = 1, 2
_TENSOR_CONTENT = 4


def _field_head(number: int, length: int) -> bytes:
    """The tag (wire type 2, length-delimited) and length of one field."""
    return _varint(number << 3 | 2) + _varint(length)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
