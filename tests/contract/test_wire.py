"""contract.wire against TensorFlow itself: what TF writes we read, what we write TF reads.

The oracle is `tf.make_ndarray` on the real TensorProto class; ours sees the same bytes.
Values are never symmetric, so a reversed or transposed read cannot pass.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from contract import errors, tfs_protos, wire

DataType = tfs_protos.DataType
ContractError, TensorError = errors.ContractError, errors.TensorError

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def tf() -> Any:
    import tensorflow

    return tensorflow


def real_proto(**fields: Any) -> Any:
    """A real tensorflow.TensorProto; `shape` becomes its tensor_shape."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    shape = fields.pop("shape", ())
    proto = tensor_pb2.TensorProto(**fields)
    proto.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
        )
    )
    return proto


def ours(real: Any) -> Any:
    """The same bytes, parsed by our class."""
    return tfs_protos.TensorProto.FromString(real.SerializeToString())


def ramp(shape: tuple[int, ...], dtype: Any, start: int = 3) -> np.ndarray:
    """start, start+1, ... (wrapping inside small int types): no two positions alike."""
    n = int(np.prod(shape))
    return (np.arange(start, start + n) % 100 - 20).astype(dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Building


def test_images_tensor_reads_back_through_tensorflow(tf: Any) -> None:
    from tensorflow.core.framework import tensor_pb2

    images = RNG.integers(0, 256, size=(3, 5, 4, 3), dtype=np.uint8)
    proto = wire.images_tensor(images)
    assert proto.dtype == DataType.DT_UINT8 and len(proto.tensor_content) == images.size
    real = tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    np.testing.assert_array_equal(tf.make_ndarray(real), images)


def test_images_tensor_copies_a_strided_view_in_c_order(tf: Any) -> None:
    from tensorflow.core.framework import tensor_pb2

    base = RNG.integers(0, 256, size=(2, 6, 6, 3), dtype=np.uint8)
    view = base[:, ::-2, 1:5, ::-1]  # not contiguous, negative strides
    real = tensor_pb2.TensorProto.FromString(wire.images_tensor(view).SerializeToString())
    np.testing.assert_array_equal(tf.make_ndarray(real), view)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((1, 2, 2, 3), np.float32), r"uint8 numpy array\. Received: dtype=float32"),
        (np.zeros((2, 2, 3), np.uint8), r"4-D .* Received: shape=\(2, 2, 3\)"),
        ([[[[0]]]], r"Received: dtype=list"),
    ],
)
def test_images_tensor_refuses(images: Any, message: str) -> None:
    with pytest.raises(TensorError, match=message):
        wire.images_tensor(images)


@pytest.mark.parametrize(
    "dtype", ["uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bool"]
)
def test_array_tensor_reads_back_through_tensorflow(tf: Any, dtype: str) -> None:
    from tensorflow.core.framework import tensor_pb2

    array = ramp((2, 3, 4), dtype)
    real = tensor_pb2.TensorProto.FromString(wire.array_tensor(array).SerializeToString())
    got = tf.make_ndarray(real)
    assert got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)


def test_array_tensor_writes_little_endian_from_a_big_endian_array(tf: Any) -> None:
    array = ramp((2, 3), ">f4")
    proto = wire.array_tensor(array)
    assert proto.tensor_content == array.astype("<f4").tobytes()
    np.testing.assert_array_equal(wire.tensor_array(proto, dtype="float32"), array)


def test_array_tensor_strings_go_as_string_val(tf: Any) -> None:
    proto = wire.array_tensor(np.array([["ab", "ç"], ["", "xyz"]]))
    assert proto.dtype == DataType.DT_STRING and not proto.tensor_content
    real = tf.make_tensor_proto(np.array([[b"ab", "ç".encode()], [b"", b"xyz"]]))
    assert proto.SerializeToString() == real.SerializeToString()


def test_array_tensor_refuses_objects_that_are_not_strings() -> None:
    with pytest.raises(TensorError, match=r"hold str or bytes\. Received: int 5"):
        wire.array_tensor(np.array([b"a", 5], dtype=object))


@pytest.mark.parametrize("dtype", ["complex64", "uint16", "datetime64[s]"])
def test_array_tensor_refuses_dtypes_we_do_not_send(dtype: str) -> None:
    with pytest.raises(TensorError, match=re.escape(f"Received: dtype={dtype}")):
        wire.array_tensor(np.zeros(2, dtype=dtype))


# ---------------------------------------------------------------------------------------------
# Parsing what TF writes: tensor_content (tf.make_tensor_proto) and typed *_val (TF Serving)


@pytest.mark.parametrize(
    "dtype", ["uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bool"]
)
def test_tensor_content_from_make_tensor_proto(tf: Any, dtype: str) -> None:
    array = ramp((2, 3, 4), dtype)
    real = tf.make_tensor_proto(array)
    got = wire.tensor_array(ours(real), dtype=dtype, shape=(2, 3, 4))
    assert got.dtype == np.dtype(dtype) and got.flags.writeable
    np.testing.assert_array_equal(got, array)
    np.testing.assert_array_equal(got, tf.make_ndarray(real))


def _half_bits(values: np.ndarray) -> list[int]:
    return values.astype(np.float16).view(np.uint16).astype(int).ravel().tolist()


# (dtype name, real field, values as written, expected array). The way TF Serving answers.
TYPED_VALUES = [
    ("float32", "float_val", [0.5, -1.25, 3.0, 7.75, -0.0, 1e-3], np.float32),
    ("float64", "double_val", [0.5, -1.25, 3.0, 7.75, 1e300, 1e-3], np.float64),
    ("int32", "int_val", [7, -3, 2**31 - 1, 0, -(2**31), 5], np.int32),
    ("uint8", "int_val", [255, 0, 7, 128, 1, 2], np.uint8),
    ("int8", "int_val", [-128, 127, 0, -1, 5, 6], np.int8),
    ("int16", "int_val", [-32768, 32767, 0, -1, 5, 6], np.int16),
    ("int64", "int64_val", [2**40, -(2**62), 0, 1, -1, 9], np.int64),
    ("bool", "bool_val", [True, False, False, True, True, False], np.bool_),
    ("float16", "half_val", _half_bits(np.array([1.5, -2.25, 65504, 0.1, -0.0, 6e-5])), None),
]


@pytest.mark.parametrize(("dtype", "field", "values", "numpy"), TYPED_VALUES, ids=lambda v: v)
def test_typed_values_in_order(
    tf: Any, dtype: str, field: str, values: list[Any], numpy: Any
) -> None:
    real = real_proto(dtype=wire.data_type(dtype), shape=(2, 3), **{field: values})
    got = wire.tensor_array(ours(real), dtype=dtype, shape=(2, 3))
    expected = tf.make_ndarray(real)
    assert got.dtype == expected.dtype == wire.numpy_dtype(dtype)
    np.testing.assert_array_equal(got, expected)
    if numpy is not None:  # and in the order written, row-major
        np.testing.assert_array_equal(got, np.array(values, dtype=numpy).reshape(2, 3))


def test_float_val_probabilities_keep_row_and_class_order(tf: Any) -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8]], dtype=np.float32)
    real = real_proto(dtype=DataType.DT_FLOAT, shape=(2, 3), float_val=probs.ravel().tolist())
    got = wire.tensor_array(ours(real), dtype="float32", shape=(None, 3))
    np.testing.assert_array_equal(got, probs)
    assert got[1].argmax() == 2 and got[0].argmax() == 0


@pytest.mark.parametrize(
    ("dtype", "field", "value"),
    [("float32", "float_val", 2.5), ("int32", "int_val", -4), ("string", "string_val", b"x")],
)
def test_a_single_value_fills_the_shape(tf: Any, dtype: str, field: str, value: Any) -> None:
    real = real_proto(dtype=wire.data_type(dtype), shape=(2, 3), **{field: [value]})
    got = wire.tensor_array(ours(real), dtype=dtype, shape=(2, 3))
    assert got.shape == (2, 3) and all(v == value for v in got.ravel())
    np.testing.assert_array_equal(got, tf.make_ndarray(real))


def test_float16_from_tensor_content_and_half_val_agree(tf: Any) -> None:
    array = np.array([[1.5, -2.25], [65504, 6e-5]], dtype=np.float16)
    from_content = wire.tensor_array(ours(tf.make_tensor_proto(array)), dtype="float16")
    real = real_proto(dtype=DataType.DT_HALF, shape=(2, 2), half_val=_half_bits(array))
    from_values = wire.tensor_array(ours(real), dtype="float16")
    np.testing.assert_array_equal(from_content, array)
    np.testing.assert_array_equal(from_values, array)


def test_bfloat16_is_read_as_float32_from_content_and_half_val(tf: Any) -> None:
    values = [[1.5, -2.25, 3.0], [0.0078125, -448.0, 1e30]]
    tensor = tf.constant(values, dtype=tf.bfloat16)
    expected = tf.cast(tensor, tf.float32).numpy()  # the exact bfloat16 values, widened
    real = tf.make_tensor_proto(tensor.numpy())
    assert real.tensor_content  # TF writes bfloat16 as 2-byte patterns in tensor_content
    from_content = wire.tensor_array(ours(real), dtype="bfloat16", shape=(2, 3))
    bits = tf.bitcast(tensor, tf.uint16).numpy().astype(int).ravel().tolist()
    as_values = real_proto(dtype=DataType.DT_BFLOAT16, shape=(2, 3), half_val=bits)
    from_values = wire.tensor_array(ours(as_values), dtype="bfloat16", shape=(2, 3))
    for got in (from_content, from_values):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(from_values, tf.make_ndarray(as_values).astype(np.float32))


def test_string_tensor_content_is_tfs_string_list(tf: Any) -> None:
    """TF Serving's --enable_serialization_as_tensor_content writes strings as TF's string list
    (Tensor::AsProtoTensorContent); TensorFlow itself reads what we encode, and we read it
    back: long strings (two-byte lengths), empty ones, any bytes."""
    strings = [b"cat", b"", b"\xff\x00" * 100, "ç".encode(), b"{" * 20000]
    proto = tfs_protos.TensorProto(
        dtype=DataType.DT_STRING, tensor_content=wire.string_list_bytes(strings)
    )
    proto.tensor_shape.dim.add(size=5)
    by_tf = tf.io.parse_tensor(proto.SerializeToString(), tf.string).numpy().tolist()
    assert by_tf == strings  # TF's own DecodeStringList agrees with our encoding
    got = wire.tensor_array(proto, dtype="string", shape=(5,))
    assert got.dtype == object and got.tolist() == strings


def test_string_val(tf: Any) -> None:
    strings = np.array([[b"cat", b""], [b"\xff\x00", "ç".encode()]], dtype=object)
    real = tf.make_tensor_proto(strings)
    got = wire.tensor_array(ours(real), dtype="string", shape=(2, 2))
    assert got.dtype == object and got.tolist() == strings.tolist()
    assert got.tolist() == tf.make_ndarray(real).tolist()


def test_scalars_and_empty_tensors(tf: Any) -> None:
    scalar = wire.tensor_array(ours(tf.make_tensor_proto(np.float32(2.5))), dtype="float32")
    assert scalar.shape == () and scalar == 2.5
    empty = tf.make_tensor_proto(np.zeros((0, 3), np.float32))
    assert wire.tensor_array(ours(empty), dtype="float32", shape=(0, 3)).shape == (0, 3)


# ---------------------------------------------------------------------------------------------
# Refusals: each names what was expected and echoes what came.

F32 = DataType.DT_FLOAT
REFUSALS = [
    # (proto fields, dtype, expected shape, error type, message)
    (dict(dtype=F32, shape=(2, 3), float_val=[1.0] * 6), "float32", (3, 2), TensorError,
     r"must have shape \(3, 2\)\. Received: shape=\(2, 3\)"),
    (dict(dtype=F32, shape=(2, 3), float_val=[1.0] * 6), "float32", (2, 3, 1), TensorError,
     r"must have shape \(2, 3, 1\)\. Received: shape=\(2, 3\)"),
    (dict(dtype=F32, shape=(2, 3), float_val=[1.0] * 5), "float32", None, TensorError,
     r"shape \(2, 3\) needs 6 values in float_val \(or 1 to fill it\)\. Received: 5 values"),
    (dict(dtype=F32, shape=(2, 3), float_val=[1.0] * 7), "float32", None, TensorError,
     r"needs 6 values .* Received: 7 values"),
    (dict(dtype=F32, shape=(2, 3)), "float32", None, TensorError,
     r"needs 6 values .* Received: 0 values"),
    (dict(dtype=F32, shape=(2, 3), tensor_content=b"\0" * 20), "float32", None, TensorError,
     r"needs 24 bytes of float32 in tensor_content\. Received: 20 bytes"),
    (dict(dtype=DataType.DT_UINT8, shape=(2,), int_val=[1, 2]), "float32", None, TensorError,
     r"must be float32\. Received: dtype=uint8"),
    (dict(dtype=DataType.DT_COMPLEX64, shape=(1,), scomplex_val=[1, 2]), "float32", None,
     TensorError, r"must be float32\. Received: dtype=DT_COMPLEX64"),
    (dict(dtype=DataType.DT_UINT8, shape=(2,), int_val=[1, 300]), "uint8", None, TensorError,
     r"uint8 needs int_val values in \[0, 255\]\. Received: 300"),
    (dict(dtype=DataType.DT_STRING, shape=(1,), tensor_content=b"ab"), "string", None,
     TensorError, r"1 strings in tensor_content must be TF's string list .* Received: 2 bytes"),
    (dict(dtype=DataType.DT_STRING, shape=(2,), tensor_content=b"\x01a"), "string", None,
     TensorError, r"2 strings in tensor_content .* Received: 2 bytes"),
    (dict(dtype=DataType.DT_STRING, shape=(1,), tensor_content=b"\x80\x80"), "string", None,
     TensorError, r"1 strings in tensor_content .* Received: 2 bytes"),
    (dict(dtype=F32, shape=(-1, 3), float_val=[1.0] * 3), "float32", None, TensorError,
     r"fully known shape\. Received: shape=\(-1, 3\)"),
    (dict(dtype=F32, shape=(2,), float_val=[1.0] * 2), "complex64", None, ContractError,
     r"dtype must be one of .*\. Received: dtype='complex64'"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "dtype", "shape", "error", "message"), REFUSALS)
def test_tensor_array_refuses(
    fields: dict[str, Any], dtype: str, shape: Any, error: type[Exception], message: str
) -> None:
    proto = ours(real_proto(**fields))
    with pytest.raises(error, match=message) as caught:
        wire.tensor_array(proto, dtype=dtype, shape=shape, name="'probabilities'")
    if error is TensorError:
        assert str(caught.value).startswith("'probabilities'")


def test_unknown_rank_is_refused() -> None:
    proto = tfs_protos.TensorProto(dtype=F32, float_val=[1.0])
    proto.tensor_shape.unknown_rank = True
    with pytest.raises(TensorError, match=r"fully known shape\. Received: shape=\(\) rank=unknown"):
        wire.tensor_array(proto, dtype="float32")


# ---------------------------------------------------------------------------------------------
# Signatures and requests


def real_tensor_info(dtype: int, dims: list[int] | None, name: str = "x:0") -> Any:
    from tensorflow.core.protobuf import meta_graph_pb2

    info = meta_graph_pb2.TensorInfo(name=name, dtype=dtype)
    if dims is None:
        info.tensor_shape.unknown_rank = True
    else:
        info.tensor_shape.dim.extend([info.tensor_shape.Dim(size=d) for d in dims])
    return tfs_protos.TensorInfo.FromString(info.SerializeToString())


@pytest.mark.parametrize(
    ("dtype", "dims", "expected"),
    [
        (DataType.DT_UINT8, [-1, 224, 224, 3], ("uint8", (None, 224, 224, 3))),
        (DataType.DT_FLOAT, [-1, 1000], ("float32", (None, 1000))),
        (DataType.DT_BFLOAT16, [8, -1], ("bfloat16", (8, None))),
        (DataType.DT_FLOAT, None, ("float32", ())),
        (DataType.DT_STRING, [], ("string", ())),
        (DataType.DT_COMPLEX64, [2], ("DT_COMPLEX64", (2,))),
    ],
)
def test_tensor_sig(dtype: int, dims: list[int] | None, expected: tuple[Any, ...]) -> None:
    assert wire.tensor_sig(real_tensor_info(dtype, dims)) == expected


def test_dtype_names_round_trip() -> None:
    for dtype, name in wire.DTYPE_NAMES.items():
        assert wire.data_type(name) == dtype and wire.dtype_name(dtype) == name
    assert wire.dtype_name(999) == "DataType(999)"


@pytest.mark.parametrize(
    ("kwargs", "choice", "value"),
    [
        ({"version": 3}, "version", 3),
        ({"version": 0}, "version", 0),
        ({"version_label": "stable"}, "version_label", "stable"),
        ({}, None, None),
    ],
)
def test_predict_request_reads_with_the_real_schema(
    kwargs: dict[str, Any], choice: str | None, value: Any
) -> None:
    from tensorflow_serving.apis import predict_pb2

    pixels = wire.images_tensor(RNG.integers(0, 256, size=(2, 4, 4, 3), dtype=np.uint8))
    request = wire.predict_request(
        "resnet", signature="serving_default", inputs={"pixels": pixels},
        output_filter=("probabilities",), **kwargs,
    )  # fmt: skip
    real = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    spec = real.model_spec
    assert (spec.name, spec.signature_name) == ("resnet", "serving_default")
    assert spec.WhichOneof("version_choice") == choice
    if choice == "version":
        assert spec.version.value == value
    elif choice == "version_label":
        assert spec.version_label == value
    assert list(real.output_filter) == ["probabilities"]
    assert real.inputs["pixels"].SerializeToString() == pixels.SerializeToString()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 2, "version_label": "stable"},
         r"not both\. Received: version=2, version_label='stable'"),
        ({"version": -1}, r"version must be >= 0\. Received: version=-1"),
    ],
)  # fmt: skip
def test_predict_request_refuses(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ContractError, match=message):
        wire.predict_request("resnet", signature="serving_default", inputs={}, **kwargs)


@pytest.mark.parametrize(
    "inputs",
    [
        {"images": RNG.integers(0, 256, size=(3, 5, 7, 3), dtype=np.uint8)},
        {"images": RNG.integers(0, 256, size=(64, 224, 224, 3), dtype=np.uint8)},  # 9.6 MB
        # a strided view, a non-native byte order and two inputs: still one message
        {
            "a": RNG.integers(0, 256, size=(2, 6, 6, 3), dtype=np.uint8)[:, ::2],
            "b": np.arange(6, dtype=">f4").reshape(2, 3),
        },
    ],
    ids=["small", "large", "views-and-two-inputs"],
)
def test_predict_request_bytes_is_the_same_message(inputs: dict[str, np.ndarray]) -> None:
    """The hand-framed request parses, with TF Serving's own schema, to exactly the request
    protobuf builds from `array_tensor`s."""
    from tensorflow_serving.apis import predict_pb2

    kwargs: dict[str, Any] = {"signature": "serving_default", "output_filter": ("probabilities",)}
    raw = wire.predict_request_bytes("resnet", inputs=inputs, version=7, **kwargs)
    built = wire.predict_request(
        "resnet", inputs={k: wire.array_tensor(v) for k, v in inputs.items()}, version=7, **kwargs
    )
    real = predict_pb2.PredictRequest.FromString(raw)
    assert real == predict_pb2.PredictRequest.FromString(built.SerializeToString())
    assert tfs_protos.PredictRequest.FromString(raw) == built
    for key, array in inputs.items():  # and the pixels are the array's, in C order
        got = np.frombuffer(real.inputs[key].tensor_content, dtype=array.dtype.newbyteorder("<"))
        np.testing.assert_array_equal(got.reshape(array.shape), array)


def test_predict_request_bytes_refuses_strings() -> None:
    with pytest.raises(TensorError, match=r"tensor_content inputs must have one of the dtypes"):
        wire.predict_request_bytes(
            "resnet", signature="s", inputs={"x": np.array(["a", "b"], dtype=object)}
        )
