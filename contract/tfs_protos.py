"""TF Serving's wire messages without TensorFlow: a private descriptor pool built from a table.

The tensorflow-serving-api wheel's `*_pb2` modules import `tensorflow.core.framework.*_pb2`,
which loads the whole TensorFlow wheel. What the gateway, the load tester and the config
writer need is only a subset of those messages, so it is declared here with the same full
names, field names, numbers, types and labels as TensorFlow's and TF Serving's own .proto
files: the bytes on the wire are the same, and `tests/contract/test_tfs_protos.py` compares
every declared field with the real descriptors. The pool is private (not
`descriptor_pool.Default()`), so these classes never clash with the real ones when both are
loaded in one process; a message crosses between them only as bytes.

    tensorflow          DataType, TensorShapeProto(.Dim), TensorProto, TensorInfo, SignatureDef
    tensorflow.error    Code (as ErrorCode)
    tensorflow.serving  ModelSpec, Predict*, GetModelMetadata*, SignatureDefMap, GetModelStatus*,
                        ModelVersionStatus(.State), StatusProto, ReloadConfig*, Metric,
                        PredictionLog, PredictLog, LogMetadata, ModelServerConfig,
                        ModelConfigList, ModelConfig, ModelType,
                        FileSystemStoragePathSourceConfig(.ServableVersionPolicy, ...),
                        BatchingParameters, PrometheusConfig, MonitoringConfig
    google.protobuf     Any, Int64Value, StringValue (copied from protobuf's own descriptors)

Messages are classes built by `message_factory` (typed `Any`), enums are `IntEnum`s whose
members are the descriptor's values. The gRPC method paths and stubs are in
`contract.tfs_grpc`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Final, NamedTuple

from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    wrappers_pb2,
)

# ---------------------------------------------------------------------------------------------
# Enums: the Python members are the table the descriptors are built from.


class DataType(IntEnum):
    """tensorflow.DataType (tensorflow/core/framework/types.proto), every value."""

    DT_INVALID = 0
    DT_FLOAT = 1
    DT_DOUBLE = 2
    DT_INT32 = 3
    DT_UINT8 = 4
    DT_INT16 = 5
    DT_INT8 = 6
    DT_STRING = 7
    DT_COMPLEX64 = 8
    DT_INT64 = 9
    DT_BOOL = 10
    DT_QINT8 = 11
    DT_QUINT8 = 12
    DT_QINT32 = 13
    DT_BFLOAT16 = 14
    DT_QINT16 = 15
    DT_QUINT16 = 16
    DT_UINT16 = 17
    DT_COMPLEX128 = 18
    DT_HALF = 19
    DT_RESOURCE = 20
    DT_VARIANT = 21
    DT_UINT32 = 22
    DT_UINT64 = 23
    DT_FLOAT8_E5M2 = 24
    DT_FLOAT8_E4M3FN = 25
    DT_FLOAT8_E4M3FNUZ = 26
    DT_FLOAT8_E4M3B11FNUZ = 27
    DT_FLOAT8_E5M2FNUZ = 28
    DT_INT4 = 29
    DT_UINT4 = 30
    DT_INT2 = 31
    DT_UINT2 = 32
    DT_FLOAT4_E2M1FN = 33
    # Reference types: the value type + 100. Graph-internal; never on the Predict wire.
    DT_FLOAT_REF = 101
    DT_DOUBLE_REF = 102
    DT_INT32_REF = 103
    DT_UINT8_REF = 104
    DT_INT16_REF = 105
    DT_INT8_REF = 106
    DT_STRING_REF = 107
    DT_COMPLEX64_REF = 108
    DT_INT64_REF = 109
    DT_BOOL_REF = 110
    DT_QINT8_REF = 111
    DT_QUINT8_REF = 112
    DT_QINT32_REF = 113
    DT_BFLOAT16_REF = 114
    DT_QINT16_REF = 115
    DT_QUINT16_REF = 116
    DT_UINT16_REF = 117
    DT_COMPLEX128_REF = 118
    DT_HALF_REF = 119
    DT_RESOURCE_REF = 120
    DT_VARIANT_REF = 121
    DT_UINT32_REF = 122
    DT_UINT64_REF = 123
    DT_FLOAT8_E5M2_REF = 124
    DT_FLOAT8_E4M3FN_REF = 125
    DT_FLOAT8_E4M3FNUZ_REF = 126
    DT_FLOAT8_E4M3B11FNUZ_REF = 127
    DT_FLOAT8_E5M2FNUZ_REF = 128
    DT_INT4_REF = 129
    DT_UINT4_REF = 130
    DT_INT2_REF = 131
    DT_UINT2_REF = 132
    DT_FLOAT4_E2M1FN_REF = 133


class ErrorCode(IntEnum):
    """tensorflow.error.Code (xla/tsl/protobuf/error_codes.proto), in TF's declaration order."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    UNAUTHENTICATED = 16
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    DO_NOT_USE_RESERVED_FOR_FUTURE_EXPANSION_USE_DEFAULT_IN_SWITCH_INSTEAD_ = 20


class ModelVersionState(IntEnum):
    """tensorflow.serving.ModelVersionStatus.State: where a version is in its lifecycle."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


class ModelType(IntEnum):
    """tensorflow.serving.ModelType (deprecated in favour of ModelConfig.model_platform)."""

    MODEL_TYPE_UNSPECIFIED = 0
    TENSORFLOW = 1
    OTHER = 2


# ---------------------------------------------------------------------------------------------
# The table: one row per field, in a compact form the builder turns into descriptor protos.

_T = descriptor_pb2.FieldDescriptorProto
INT32, INT64, UINT32, UINT64 = _T.TYPE_INT32, _T.TYPE_INT64, _T.TYPE_UINT32, _T.TYPE_UINT64
FLOAT, DOUBLE, BOOL = _T.TYPE_FLOAT, _T.TYPE_DOUBLE, _T.TYPE_BOOL
STRING, BYTES, MESSAGE, ENUM = _T.TYPE_STRING, _T.TYPE_BYTES, _T.TYPE_MESSAGE, _T.TYPE_ENUM


class _Field(NamedTuple):
    name: str
    number: int
    type: int
    type_name: str = ""  # ".package.Message" of a MESSAGE or ENUM field (of the value, for maps)
    repeated: bool = False
    oneof: str = ""
    map_key: int = 0  # not 0: a map<map_key, type> field


def _f(name: str, number: int, type_: int, type_name: str = "", *, oneof: str = "") -> _Field:
    """A singular field, optionally a member of the oneof named `oneof`."""
    return _Field(name, number, type_, type_name, oneof=oneof)


def _rep(name: str, number: int, type_: int, type_name: str = "") -> _Field:
    """A repeated field (proto3 packs repeated scalars by default, as TF declares them)."""
    return _Field(name, number, type_, type_name, repeated=True)


def _map(name: str, number: int, value_type: int, value_type_name: str = "") -> _Field:
    """A map<string, value> field: protobuf stores it as a repeated nested `XxxEntry`."""
    return _Field(name, number, value_type, value_type_name, repeated=True, map_key=STRING)


class _File(NamedTuple):
    name: str
    package: str
    dependencies: tuple[str, ...]
    messages: dict[str, list[_Field]]  # "Outer.Inner" nests; a parent comes before its children
    enums: dict[str, type[IntEnum]]  # "Message.Enum" nests inside a declared message


_TENSOR_SHAPE = ".tensorflow.TensorShapeProto"
_MODEL_SPEC = ".tensorflow.serving.ModelSpec"
_STATUS = ".tensorflow.serving.StatusProto"
_MODEL_CONFIG_LIST = ".tensorflow.serving.ModelConfigList"
_FS_CONFIG = ".tensorflow.serving.FileSystemStoragePathSourceConfig"
_VERSION_POLICY = f"{_FS_CONFIG}.ServableVersionPolicy"

_TENSORFLOW = _File(
    "contract/tfs/tensorflow.proto",
    "tensorflow",
    (),
    {
        "TensorShapeProto": [
            _rep("dim", 2, MESSAGE, ".tensorflow.TensorShapeProto.Dim"),
            _f("unknown_rank", 3, BOOL),
        ],
        "TensorShapeProto.Dim": [_f("size", 1, INT64), _f("name", 2, STRING)],
        "TensorProto": [
            _f("dtype", 1, ENUM, ".tensorflow.DataType"),
            _f("tensor_shape", 2, MESSAGE, _TENSOR_SHAPE),
            _f("version_number", 3, INT32),
            _f("tensor_content", 4, BYTES),
            _rep("half_val", 13, INT32),  # float16 / bfloat16 bit patterns, one per int32
            _rep("float_val", 5, FLOAT),
            _rep("double_val", 6, DOUBLE),
            _rep("int_val", 7, INT32),  # int32, int16, int8, uint16, uint8
            _rep("string_val", 8, BYTES),
            _rep("scomplex_val", 9, FLOAT),
            _rep("int64_val", 10, INT64),
            _rep("bool_val", 11, BOOL),
            _rep("dcomplex_val", 12, DOUBLE),
            _rep("uint32_val", 16, UINT32),
            _rep("uint64_val", 17, UINT64),
            _f("float8_val", 18, BYTES),
        ],
        "TensorInfo": [
            _f("name", 1, STRING, oneof="encoding"),
            _f("dtype", 2, ENUM, ".tensorflow.DataType"),
            _f("tensor_shape", 3, MESSAGE, _TENSOR_SHAPE),
        ],
        "SignatureDef": [
            _map("inputs", 1, MESSAGE, ".tensorflow.TensorInfo"),
            _map("outputs", 2, MESSAGE, ".tensorflow.TensorInfo"),
            _f("method_name", 3, STRING),
            _map("defaults", 4, MESSAGE, ".tensorflow.TensorProto"),
        ],
    },
    {"DataType": DataType},
)

_TENSORFLOW_ERROR = _File(
    "contract/tfs/tensorflow_error.proto", "tensorflow.error", (), {}, {"Code": ErrorCode}
)

_SERVING = _File(
    "contract/tfs/tensorflow_serving.proto",
    "tensorflow.serving",
    (
        "google/protobuf/any.proto",
        "google/protobuf/wrappers.proto",
        _TENSORFLOW.name,
        _TENSORFLOW_ERROR.name,
    ),
    {
        # apis/model.proto
        "ModelSpec": [
            _f("name", 1, STRING),
            _f("version", 2, MESSAGE, ".google.protobuf.Int64Value", oneof="version_choice"),
            _f("version_label", 4, STRING, oneof="version_choice"),
            _f("signature_name", 3, STRING),
        ],
        # apis/predict.proto
        "PredictRequest": [
            _f("model_spec", 1, MESSAGE, _MODEL_SPEC),
            _map("inputs", 2, MESSAGE, ".tensorflow.TensorProto"),
            _rep("output_filter", 3, STRING),
        ],
        "PredictResponse": [
            _f("model_spec", 2, MESSAGE, _MODEL_SPEC),
            _map("outputs", 1, MESSAGE, ".tensorflow.TensorProto"),
        ],
        # apis/get_model_metadata.proto
        "SignatureDefMap": [_map("signature_def", 1, MESSAGE, ".tensorflow.SignatureDef")],
        "GetModelMetadataRequest": [
            _f("model_spec", 1, MESSAGE, _MODEL_SPEC),
            _rep("metadata_field", 2, STRING),
        ],
        "GetModelMetadataResponse": [
            _f("model_spec", 1, MESSAGE, _MODEL_SPEC),
            _map("metadata", 2, MESSAGE, ".google.protobuf.Any"),
        ],
        # apis/status.proto, apis/get_model_status.proto
        "StatusProto": [
            _f("error_code", 1, ENUM, ".tensorflow.error.Code"),
            _f("error_message", 2, STRING),
        ],
        "GetModelStatusRequest": [_f("model_spec", 1, MESSAGE, _MODEL_SPEC)],
        "ModelVersionStatus": [
            _f("version", 1, INT64),
            _f("state", 2, ENUM, ".tensorflow.serving.ModelVersionStatus.State"),
            _f("status", 3, MESSAGE, _STATUS),
        ],
        "GetModelStatusResponse": [
            _rep("model_version_status", 1, MESSAGE, ".tensorflow.serving.ModelVersionStatus"),
        ],
        # apis/model_management.proto
        "ReloadConfigRequest": [
            _f("config", 1, MESSAGE, ".tensorflow.serving.ModelServerConfig"),
            _rep("metric_names", 2, STRING),
        ],
        "ReloadConfigResponse": [
            _f("status", 1, MESSAGE, _STATUS),
            _rep("metric", 2, MESSAGE, ".tensorflow.serving.Metric"),
        ],
        "Metric": [
            _f("name", 1, STRING),
            _f("int64_value_increase", 2, INT64, oneof="value_increase"),
        ],
        # apis/logging.proto, apis/prediction_log.proto (warmup records)
        "LogMetadata": [
            _f("model_spec", 1, MESSAGE, _MODEL_SPEC),
            _rep("saved_model_tags", 3, STRING),
            _f("timestamp_secs", 4, INT64),
        ],
        "PredictLog": [
            _f("request", 1, MESSAGE, ".tensorflow.serving.PredictRequest"),
            _f("response", 2, MESSAGE, ".tensorflow.serving.PredictResponse"),
        ],
        "PredictionLog": [
            _f("log_metadata", 1, MESSAGE, ".tensorflow.serving.LogMetadata"),
            _f("predict_log", 6, MESSAGE, ".tensorflow.serving.PredictLog", oneof="log_type"),
        ],
        # config/file_system_storage_path_source.proto
        "FileSystemStoragePathSourceConfig": [
            _rep("servables", 5, MESSAGE, f"{_FS_CONFIG}.ServableToMonitor"),
            _f("file_system_poll_wait_seconds", 3, INT64),
            _f("fail_if_zero_versions_at_startup", 4, BOOL),
            _f("servable_versions_always_present", 6, BOOL),
        ],
        "FileSystemStoragePathSourceConfig.ServableVersionPolicy": [
            _f("latest", 100, MESSAGE, f"{_VERSION_POLICY}.Latest", oneof="policy_choice"),
            _f("all", 101, MESSAGE, f"{_VERSION_POLICY}.All", oneof="policy_choice"),
            _f("specific", 102, MESSAGE, f"{_VERSION_POLICY}.Specific", oneof="policy_choice"),
        ],
        "FileSystemStoragePathSourceConfig.ServableVersionPolicy.Latest": [
            _f("num_versions", 1, UINT32),
        ],
        "FileSystemStoragePathSourceConfig.ServableVersionPolicy.All": [],
        "FileSystemStoragePathSourceConfig.ServableVersionPolicy.Specific": [
            _rep("versions", 1, INT64),
        ],
        "FileSystemStoragePathSourceConfig.ServableToMonitor": [
            _f("servable_name", 1, STRING),
            _f("base_path", 2, STRING),
            _f("servable_version_policy", 4, MESSAGE, _VERSION_POLICY),
        ],
        # config/model_server_config.proto
        "ModelConfig": [
            _f("name", 1, STRING),
            _f("base_path", 2, STRING),
            _f("model_type", 3, ENUM, ".tensorflow.serving.ModelType"),
            _f("model_platform", 4, STRING),
            _f("model_version_policy", 7, MESSAGE, _VERSION_POLICY),
            _map("version_labels", 8, INT64),
        ],
        "ModelConfigList": [_rep("config", 1, MESSAGE, ".tensorflow.serving.ModelConfig")],
        "ModelServerConfig": [
            _f("model_config_list", 1, MESSAGE, _MODEL_CONFIG_LIST, oneof="config"),
            _f("custom_model_config", 2, MESSAGE, ".google.protobuf.Any", oneof="config"),
        ],
        # servables/tensorflow/session_bundle_config.proto: BatchingParameters, copied field by
        # field because the tensorflow-serving-api wheel does not ship this file.
        "BatchingParameters": [
            _f("max_batch_size", 1, MESSAGE, ".google.protobuf.Int64Value"),
            _f("batch_timeout_micros", 2, MESSAGE, ".google.protobuf.Int64Value"),
            _f("max_enqueued_batches", 3, MESSAGE, ".google.protobuf.Int64Value"),
            _f("num_batch_threads", 4, MESSAGE, ".google.protobuf.Int64Value"),
            _f("thread_pool_name", 5, MESSAGE, ".google.protobuf.StringValue"),
            _rep("allowed_batch_sizes", 6, INT64),
            _f("pad_variable_length_inputs", 7, BOOL),
        ],
        # config/monitoring_config.proto: copied for the same reason (not in the wheel).
        "PrometheusConfig": [_f("enable", 1, BOOL), _f("path", 2, STRING)],
        "MonitoringConfig": [
            _f("prometheus_config", 1, MESSAGE, ".tensorflow.serving.PrometheusConfig"),
        ],
    },
    {"ModelType": ModelType, "ModelVersionStatus.State": ModelVersionState},
)

_FILES: Final = (_TENSORFLOW, _TENSORFLOW_ERROR, _SERVING)


# ---------------------------------------------------------------------------------------------
# The builder: table -> FileDescriptorProto -> private pool.


def _entry_name(field_name: str) -> str:
    """protoc's name for a map field's entry message: `version_labels` -> VersionLabelsEntry."""
    return "".join(part.capitalize() for part in field_name.split("_")) + "Entry"


def _add_field(message: descriptor_pb2.DescriptorProto, full_name: str, row: _Field) -> None:
    """Append `row` to `message` (whose full name is `full_name`), with its map entry if any."""
    field = message.field.add(
        name=row.name,
        number=row.number,
        type=row.type,
        label=_T.LABEL_REPEATED if row.repeated else _T.LABEL_OPTIONAL,
    )
    if row.type_name:
        field.type_name = row.type_name
    if row.map_key:
        entry = message.nested_type.add(name=_entry_name(row.name))
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=row.map_key, label=_T.LABEL_OPTIONAL)
        value = entry.field.add(name="value", number=2, type=row.type, label=_T.LABEL_OPTIONAL)
        if row.type_name:
            value.type_name = row.type_name
        field.type = MESSAGE
        field.type_name = f".{full_name}.{entry.name}"
    if row.oneof:
        names = [o.name for o in message.oneof_decl]
        if row.oneof not in names:
            message.oneof_decl.add(name=row.oneof)
            names.append(row.oneof)
        field.oneof_index = names.index(row.oneof)


def _nested(file: descriptor_pb2.FileDescriptorProto, path: str) -> descriptor_pb2.DescriptorProto:
    """The already declared message at `path` ("Outer.Inner") inside `file`."""
    outer, *inner = path.split(".")
    found = next(m for m in file.message_type if m.name == outer)
    for name in inner:
        found = next(m for m in found.nested_type if m.name == name)
    return found


def _file_proto(spec: _File) -> descriptor_pb2.FileDescriptorProto:
    """One `_File` as a proto3 FileDescriptorProto."""
    file = descriptor_pb2.FileDescriptorProto(
        name=spec.name, package=spec.package, syntax="proto3", dependency=spec.dependencies
    )
    for path, rows in spec.messages.items():
        parent, _, name = path.rpartition(".")
        siblings = _nested(file, parent).nested_type if parent else file.message_type
        message = siblings.add(name=name)
        for row in rows:
            _add_field(message, f"{spec.package}.{path}", row)
    for path, members in spec.enums.items():
        parent, _, name = path.rpartition(".")
        enums = _nested(file, parent).enum_type if parent else file.enum_type
        enum = enums.add(name=name)
        for member in members:
            enum.value.add(name=member.name, number=member.value)
    return file


def _build_pool() -> descriptor_pool.DescriptorPool:
    """A fresh pool: protobuf's well-known types we use, then our three files."""
    pool = descriptor_pool.DescriptorPool()
    for well_known in (any_pb2, wrappers_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        well_known.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    for spec in _FILES:
        pool.Add(_file_proto(spec))
    return pool


POOL: Final = _build_pool()
"""The private pool; pass it to `text_format.Parse(..., descriptor_pool=POOL)` for Any fields."""


def message_class(full_name: str) -> Any:
    """The class of a message declared in POOL, by full name (e.g. "tensorflow.TensorProto")."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


# ---------------------------------------------------------------------------------------------
# The classes. Typed Any: protobuf builds them at run time, so mypy cannot see their fields.
# Nested classes (TensorShapeProto.Dim) are class attributes under upb but not under the pure
# Python backend: reach them with `message_class(...)` or `shape.dim.add(size=...)`.

AnyProto: Any = message_class("google.protobuf.Any")
Int64Value: Any = message_class("google.protobuf.Int64Value")
StringValue: Any = message_class("google.protobuf.StringValue")

TensorShapeProto: Any = message_class("tensorflow.TensorShapeProto")
TensorProto: Any = message_class("tensorflow.TensorProto")
TensorInfo: Any = message_class("tensorflow.TensorInfo")
SignatureDef: Any = message_class("tensorflow.SignatureDef")

ModelSpec: Any = message_class("tensorflow.serving.ModelSpec")
PredictRequest: Any = message_class("tensorflow.serving.PredictRequest")
PredictResponse: Any = message_class("tensorflow.serving.PredictResponse")
SignatureDefMap: Any = message_class("tensorflow.serving.SignatureDefMap")
GetModelMetadataRequest: Any = message_class("tensorflow.serving.GetModelMetadataRequest")
GetModelMetadataResponse: Any = message_class("tensorflow.serving.GetModelMetadataResponse")
StatusProto: Any = message_class("tensorflow.serving.StatusProto")
GetModelStatusRequest: Any = message_class("tensorflow.serving.GetModelStatusRequest")
ModelVersionStatus: Any = message_class("tensorflow.serving.ModelVersionStatus")
GetModelStatusResponse: Any = message_class("tensorflow.serving.GetModelStatusResponse")
ReloadConfigRequest: Any = message_class("tensorflow.serving.ReloadConfigRequest")
ReloadConfigResponse: Any = message_class("tensorflow.serving.ReloadConfigResponse")
Metric: Any = message_class("tensorflow.serving.Metric")
LogMetadata: Any = message_class("tensorflow.serving.LogMetadata")
PredictLog: Any = message_class("tensorflow.serving.PredictLog")
PredictionLog: Any = message_class("tensorflow.serving.PredictionLog")
FileSystemStoragePathSourceConfig: Any = message_class(
    "tensorflow.serving.FileSystemStoragePathSourceConfig"
)
ServableVersionPolicy: Any = message_class(
    "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy"
)
ModelConfig: Any = message_class("tensorflow.serving.ModelConfig")
ModelConfigList: Any = message_class("tensorflow.serving.ModelConfigList")
ModelServerConfig: Any = message_class("tensorflow.serving.ModelServerConfig")
BatchingParameters: Any = message_class("tensorflow.serving.BatchingParameters")
PrometheusConfig: Any = message_class("tensorflow.serving.PrometheusConfig")
MonitoringConfig: Any = message_class("tensorflow.serving.MonitoringConfig")
