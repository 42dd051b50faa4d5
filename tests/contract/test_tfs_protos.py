"""contract.tfs_protos against the real TensorFlow / TF Serving descriptors, field by field.

Every message and enum we declare is looked up by full name in the default pool after the
real `*_pb2` modules are imported, and every declared field must match its real twin in
name, number, label, type, referenced type and oneof. Real fields we leave out are listed in
OMITTED, and that list is checked too, so it can never go stale silently. Then bytes cross
between our classes and the real ones in both directions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, text_format

from contract import tfs_grpc, tfs_protos

ROOT = Path(__file__).resolve().parents[2]
FILES = [
    "contract/tfs/tensorflow.proto",
    "contract/tfs/tensorflow_error.proto",
    "contract/tfs/tensorflow_serving.proto",
]

# Real fields we do not declare, by message: they need messages we leave out (graph, sparse and
# composite tensors, classification/regression, logging and streaming configs) or serve
# features we do not use. Checked by test_omitted_fields_are_exactly_the_real_ones_we_skip.
OMITTED: dict[str, set[str]] = {
    "tensorflow.TensorProto": {"resource_handle_val", "variant_val"},
    "tensorflow.TensorInfo": {"coo_sparse", "composite_tensor"},
    "tensorflow.serving.PredictRequest": {
        "predict_streamed_options",
        "client_id",
        "request_options",
    },
    "tensorflow.serving.LogMetadata": {
        "sampling_config",
        "dc",
        "request_origin",
        "request_criticality",
        "safe_aggregation_privacy_key",
    },
    "tensorflow.serving.PredictionLog": {
        "classify_log",
        "regress_log",
        "predict_streamed_log",
        "multi_inference_log",
        "session_run_log",
    },
    "tensorflow.serving.ModelConfig": {"logging_config"},
}

# Not shipped in the tensorflow-serving-api wheel, so there is no real descriptor to compare
# with: (name, number, label, type, type_name) copied from tensorflow/serving's
# servables/tensorflow/session_bundle_config.proto and config/monitoring_config.proto.
_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
NOT_IN_WHEEL: dict[str, list[tuple[str, int, int, int, str]]] = {
    "tensorflow.serving.BatchingParameters": [
        ("max_batch_size", 1, _OPT, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, _OPT, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, _OPT, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, _OPT, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, _OPT, _F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, _REP, _F.TYPE_INT64, ""),
        ("pad_variable_length_inputs", 7, _OPT, _F.TYPE_BOOL, ""),
    ],
    "tensorflow.serving.PrometheusConfig": [
        ("enable", 1, _OPT, _F.TYPE_BOOL, ""),
        ("path", 2, _OPT, _F.TYPE_STRING, ""),
    ],
    "tensorflow.serving.MonitoringConfig": [
        ("prometheus_config", 1, _OPT, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig"),
    ],
}


def _walk(descriptors: Any) -> Iterator[Any]:
    for message in descriptors:
        yield message
        yield from _walk(message.nested_types)


def declared_messages(pool: Any = tfs_protos.POOL) -> list[Any]:
    """Every message in our files, nested ones (map entries included) after their parent."""
    return [m for f in FILES for m in _walk(pool.FindFileByName(f).message_types_by_name.values())]


def declared_enums() -> list[Any]:
    files = [tfs_protos.POOL.FindFileByName(f) for f in FILES]
    top = [e for f in files for e in f.enum_types_by_name.values()]
    return top + [e for m in declared_messages() for e in m.enum_types]


def declared_fields() -> list[Any]:
    return [f for m in declared_messages() for f in m.fields]


@pytest.fixture(scope="module", autouse=True)
def real_protos() -> None:
    """Import every real module whose messages we mirror; they land in the default pool."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: F401
    from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2  # noqa: F401
    from tensorflow_serving.apis import (  # noqa: F401
        get_model_metadata_pb2,
        get_model_status_pb2,
        logging_pb2,
        model_management_pb2,
        model_pb2,
        model_service_pb2,
        predict_pb2,
        prediction_log_pb2,
        prediction_service_pb2,
        status_pb2,
    )
    from tensorflow_serving.config import (  # noqa: F401
        file_system_storage_path_source_pb2,
        model_server_config_pb2,
    )


def default_pool() -> Any:
    return descriptor_pool.Default()


def _label(field: Any) -> int:
    # FieldDescriptor.label is gone in protobuf 7 (upb); is_repeated / is_required remain.
    if field.is_repeated:
        return _REP
    return _F.LABEL_REQUIRED if field.is_required else _OPT


def _type_name(field: Any) -> str:
    referenced = field.message_type or field.enum_type
    return f".{referenced.full_name}" if referenced else ""


def _row(field: Any) -> dict[str, Any]:
    """What makes a field the same on the wire and in text format."""
    message = field.message_type
    return {
        "name": field.name,
        "number": field.number,
        "label": _label(field),
        "type": field.type,
        "type_name": _type_name(field),
        "oneof": field.containing_oneof.name if field.containing_oneof else None,
        "packed": field.is_packed,
        "map_entry": bool(message and message.GetOptions().map_entry),
    }


def mismatches(ours: Any, real: Any) -> list[str]:
    """How field `ours` differs from `real` (empty when they are the same on the wire)."""
    a, b = _row(ours), _row(real)
    return [f"{k}: ours={a[k]!r} real={b[k]!r}" for k in a if a[k] != b[k]]


def _twin(field: Any) -> Any:
    message = default_pool().FindMessageTypeByName(field.containing_type.full_name)
    return message.fields_by_name.get(field.name)


@pytest.mark.parametrize(
    "field",
    [f for f in declared_fields() if f.containing_type.full_name not in NOT_IN_WHEEL],
    ids=lambda f: f.full_name,
)
def test_declared_field_matches_the_real_one(field: Any) -> None:
    twin = _twin(field)
    assert twin is not None, f"{field.full_name} has no real twin"
    assert mismatches(field, twin) == []


@pytest.mark.parametrize("full_name", sorted(NOT_IN_WHEEL))
def test_messages_missing_from_the_wheel_match_upstream(full_name: str) -> None:
    fields = tfs_protos.POOL.FindMessageTypeByName(full_name).fields
    rows = [(f.name, f.number, _label(f), f.type, _type_name(f)) for f in fields]
    assert rows == NOT_IN_WHEEL[full_name]


def test_every_declared_message_has_a_real_twin() -> None:
    names = {m.full_name for m in declared_messages()} - set(NOT_IN_WHEEL)
    missing = [n for n in sorted(names) if _find_message(n) is None]
    assert missing == []
    for name in names:  # map entries stay map entries, plain messages stay plain
        ours = tfs_protos.POOL.FindMessageTypeByName(name).GetOptions().map_entry
        assert ours == default_pool().FindMessageTypeByName(name).GetOptions().map_entry, name


def _find_message(name: str) -> Any:
    try:
        return default_pool().FindMessageTypeByName(name)
    except KeyError:
        return None


def test_omitted_fields_are_exactly_the_real_ones_we_skip() -> None:
    skipped: dict[str, set[str]] = {}
    for message in declared_messages():
        if message.full_name in NOT_IN_WHEEL:
            continue
        twin = default_pool().FindMessageTypeByName(message.full_name)
        left_out = set(twin.fields_by_name) - set(message.fields_by_name)
        if left_out:
            skipped[message.full_name] = left_out
    assert skipped == OMITTED


@pytest.mark.parametrize("enum", declared_enums(), ids=lambda e: e.full_name)
def test_declared_enum_has_every_real_value(enum: Any) -> None:
    twin = default_pool().FindEnumTypeByName(enum.full_name)
    assert [(v.name, v.number) for v in enum.values] == [(v.name, v.number) for v in twin.values]


@pytest.mark.parametrize(
    ("python_enum", "full_name"),
    [
        (tfs_protos.DataType, "tensorflow.DataType"),
        (tfs_protos.ErrorCode, "tensorflow.error.Code"),
        (tfs_protos.ModelVersionState, "tensorflow.serving.ModelVersionStatus.State"),
        (tfs_protos.ModelType, "tensorflow.serving.ModelType"),
    ],
)
def test_python_enums_are_the_pool_enums(python_enum: Any, full_name: str) -> None:
    values = tfs_protos.POOL.FindEnumTypeByName(full_name).values
    assert [(m.name, m.value) for m in python_enum] == [(v.name, v.number) for v in values]


def test_a_changed_field_number_is_caught() -> None:
    """The check above is not vacuous: renumber one field in a copy of our pool and it fails."""
    pool = descriptor_pool.DescriptorPool()
    for name in ["google/protobuf/any.proto", "google/protobuf/wrappers.proto", *FILES]:
        proto = descriptor_pb2.FileDescriptorProto()
        tfs_protos.POOL.FindFileByName(name).CopyToProto(proto)
        for message in proto.message_type:
            for field in message.field:
                if (
                    f"{proto.package}.{message.name}.{field.name}"
                    == "tensorflow.TensorProto.float_val"
                ):
                    field.number = 99
        pool.Add(proto)
    broken = pool.FindMessageTypeByName("tensorflow.TensorProto").fields_by_name["float_val"]
    assert mismatches(broken, _twin(broken)) == ["number: ours=99 real=5"]


@pytest.mark.parametrize("method", tfs_grpc.METHODS, ids=lambda m: m.path)
def test_grpc_methods_match_the_real_services(method: Any) -> None:
    _, service, name = method.path.split("/")
    twin = default_pool().FindServiceByName(service).methods_by_name[name]
    assert twin.input_type.full_name == method.request.DESCRIPTOR.full_name
    assert twin.output_type.full_name == method.response.DESCRIPTOR.full_name


def test_our_classes_are_private_not_the_real_ones() -> None:
    from tensorflow.core.framework import tensor_pb2

    assert tfs_protos.TensorProto is not tensor_pb2.TensorProto
    assert (
        tfs_protos.TensorProto.DESCRIPTOR.full_name == tensor_pb2.TensorProto.DESCRIPTOR.full_name
    )
    assert default_pool().FindMessageTypeByName("tensorflow.TensorProto") is (
        tensor_pb2.TensorProto.DESCRIPTOR
    )


def test_importing_the_contract_loads_neither_tensorflow_nor_grpc() -> None:
    code = (
        "import json, sys; import contract.tfs_protos, contract.wire; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('tensorflow', 'tensorflow_serving', 'keras', 'grpc'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


# ---------------------------------------------------------------------------------------------
# Bytes across the two worlds.


def _our_request() -> Any:
    request = tfs_protos.PredictRequest(output_filter=["probabilities", "classes"])
    request.model_spec.name = "resnet"
    request.model_spec.version.value = 7
    request.model_spec.signature_name = "serving_default"
    pixels = request.inputs["pixels"]
    pixels.dtype = tfs_protos.DataType.DT_UINT8
    pixels.tensor_shape.dim.add(size=1)
    pixels.tensor_shape.dim.add(size=2)
    pixels.tensor_content = bytes([3, 1])
    scale = request.inputs["scale"]
    scale.dtype = tfs_protos.DataType.DT_FLOAT
    scale.float_val.extend([0.5, -1.25, 3.0])
    return request


def test_our_predict_request_parses_as_the_real_one() -> None:
    from tensorflow_serving.apis import predict_pb2

    ours = _our_request()
    theirs = predict_pb2.PredictRequest.FromString(ours.SerializeToString())
    assert theirs.model_spec.name == "resnet"
    assert theirs.model_spec.WhichOneof("version_choice") == "version"
    assert theirs.model_spec.version.value == 7
    assert list(theirs.output_filter) == ["probabilities", "classes"]
    assert theirs.inputs["pixels"].tensor_content == bytes([3, 1])
    assert [d.size for d in theirs.inputs["pixels"].tensor_shape.dim] == [1, 2]
    assert list(theirs.inputs["scale"].float_val) == [0.5, -1.25, 3.0]
    assert text_format.MessageToString(theirs) == text_format.MessageToString(ours)
    assert theirs.SerializeToString(deterministic=True) == ours.SerializeToString(
        deterministic=True
    )


def test_the_real_predict_request_parses_as_ours() -> None:
    from tensorflow_serving.apis import predict_pb2

    theirs = predict_pb2.PredictRequest.FromString(_our_request().SerializeToString())
    theirs.model_spec.version_label = "stable"  # switches the oneof away from version
    ours = tfs_protos.PredictRequest.FromString(theirs.SerializeToString())
    assert ours.model_spec.WhichOneof("version_choice") == "version_label"
    assert ours.model_spec.version_label == "stable"
    assert text_format.MessageToString(ours) == text_format.MessageToString(theirs)


def test_signature_def_map_crosses_inside_any_both_ways() -> None:
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    pixels = signature.inputs["pixels"]
    pixels.name, pixels.dtype = "serving_default_pixels:0", 4
    pixels.tensor_shape.dim.add(size=-1)
    signature.outputs["probabilities"].tensor_shape.unknown_rank = True
    real_map = get_model_metadata_pb2.SignatureDefMap()
    real_map.signature_def["serving_default"].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = "resnet"
    response.metadata["signature_def"].Pack(real_map)

    ours = tfs_protos.GetModelMetadataResponse.FromString(response.SerializeToString())
    packed = ours.metadata["signature_def"]
    assert packed.TypeName() == "tensorflow.serving.SignatureDefMap"
    our_map = tfs_protos.SignatureDefMap()
    assert packed.Unpack(our_map)
    got = our_map.signature_def["serving_default"]
    assert got.inputs["pixels"].name == "serving_default_pixels:0"
    assert got.inputs["pixels"].WhichOneof("encoding") == "name"
    assert got.outputs["probabilities"].tensor_shape.unknown_rank
    assert text_format.MessageToString(our_map) == text_format.MessageToString(real_map)

    back = tfs_protos.GetModelMetadataResponse()
    back.metadata["signature_def"].Pack(our_map)
    theirs = get_model_metadata_pb2.GetModelMetadataResponse.FromString(back.SerializeToString())
    unpacked = get_model_metadata_pb2.SignatureDefMap()
    assert theirs.metadata["signature_def"].Unpack(unpacked)
    assert unpacked == real_map


def test_model_server_config_text_reads_with_the_real_schema() -> None:
    from tensorflow_serving.config import model_server_config_pb2

    ours = tfs_protos.ModelServerConfig()
    config = ours.model_config_list.config.add(name="resnet", base_path="/models/resnet")
    config.model_platform = "tensorflow"
    config.model_version_policy.specific.versions.extend([1, 2])
    config.version_labels["stable"] = 1
    config.version_labels["canary"] = 2
    text = text_format.MessageToString(ours)
    theirs = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    assert text_format.MessageToString(theirs) == text
    policy = theirs.model_config_list.config[0].model_version_policy
    assert policy.WhichOneof("policy_choice") == "specific"
    assert dict(theirs.model_config_list.config[0].version_labels) == {"stable": 1, "canary": 2}


def test_prediction_log_for_warmup_reads_with_the_real_schema() -> None:
    from tensorflow_serving.apis import prediction_log_pb2

    ours = tfs_protos.PredictionLog()
    ours.predict_log.request.CopyFrom(_our_request())
    ours.log_metadata.model_spec.name = "resnet"
    theirs = prediction_log_pb2.PredictionLog.FromString(ours.SerializeToString())
    assert theirs.WhichOneof("log_type") == "predict_log"
    assert theirs.predict_log.request.model_spec.version.value == 7
    assert theirs.log_metadata.model_spec.name == "resnet"


def test_status_reply_with_an_error_code_parses_as_ours() -> None:
    from tensorflow_serving.apis import get_model_status_pb2

    theirs = get_model_status_pb2.GetModelStatusResponse()
    version = theirs.model_version_status.add(version=3, state=30)
    version.status.error_code = 5  # NOT_FOUND
    version.status.error_message = "not yet"
    ours = tfs_protos.GetModelStatusResponse.FromString(theirs.SerializeToString())
    got = ours.model_version_status[0]
    assert got.state == tfs_protos.ModelVersionState.AVAILABLE
    assert got.status.error_code == tfs_protos.ErrorCode.NOT_FOUND
    assert got.status.error_message == "not yet"
