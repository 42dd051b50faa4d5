"""Can this TensorFlow load and run an export? Run it with the TensorFlow of the TF Serving you
deploy (TF Serving 2.19.1 is built on TensorFlow 2.19), e.g. in a scratch venv:

    pip install tensorflow-cpu==2.19.1
    python deploy/tfserving/check_export.py models/demo/1            # exit 0: it can
    python deploy/tfserving/check_export.py --list models/demo/1     # the ops, one a line

It imports only TensorFlow (no project code), so it runs with any version. It checks what
TF Serving's loader needs (tensorflow_serving/servables/tensorflow/saved_model_bundle_factory.cc
calls TF's C++ LoadSavedModel into a Session):

1. every op in the graph and its function library (the XLA-compiled core, the in-graph JPEG/PNG
   decode of `serving_bytes`) is registered in this TensorFlow, and every attr a node sets is
   one its OpDef knows (a newer attr would fail the import);
2. the SavedModel loads into a TF1 Session, as TF Serving loads it;
3. every record of `assets.extra/tf_serving_warmup_requests` runs through that Session, as TF
   Serving replays them before the version is AVAILABLE (XLA compiles each shape here).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"


def graph_nodes(version_dir: Path) -> list[Any]:
    """Every NodeDef: the graph's and those of every function in its library."""
    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    nodes = list(graph.node)
    for function in graph.library.function:
        nodes.extend(function.node_def)
    return nodes


def graph_ops(version_dir: Path) -> list[str]:
    """The op names the export uses, sorted (function calls to library functions excluded)."""
    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    library = {f.signature.name for f in saved.meta_graphs[0].graph_def.library.function}
    return sorted({n.op for n in graph_nodes(version_dir) if n.op not in library})


def registry_problems(version_dir: Path) -> list[str]:
    """Ops this TensorFlow does not register, and node attrs their OpDefs do not know."""
    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    library = {f.signature.name for f in saved.meta_graphs[0].graph_def.library.function}
    problems = set()
    for node in graph_nodes(version_dir):
        if node.op in library:
            continue
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            problems.add(f"op {node.op} is not registered")
            continue
        known = {a.name for a in op_def.attr}
        for attr in node.attr:
            if not attr.startswith("_") and attr not in known:
                problems.add(f"op {node.op}: attr {attr} unknown to this TensorFlow")
    return sorted(problems)


def warmup_records(version_dir: Path) -> list[tuple[str, dict[str, Any], list[str]]]:
    """(signature, {input alias: array}, output filter) per warmup record.

    Read without the tensorflow-serving-api wheel (it pins its own TensorFlow): a PredictionLog
    holds predict_log = 6, a PredictLog request = 1, a PredictRequest model_spec = 1,
    inputs = 2 (map entries: key 1, TensorProto 2) and output_filter = 3, a ModelSpec
    signature_name = 3 (tensorflow_serving/apis/*.proto)."""
    from tensorflow.core.framework import tensor_pb2

    out = []
    for raw in tf.data.TFRecordDataset(str(version_dir / WARMUP)).as_numpy_iterator():
        log = _fields(raw)
        request = _fields(_fields(log[6][0])[1][0])
        spec = _fields(request[1][0]) if 1 in request else {}
        signature = spec.get(3, [b""])[0].decode() or "serving_default"
        inputs = {}
        for entry in request.get(2, []):
            kv = _fields(entry)
            inputs[kv[1][0].decode()] = tf.make_ndarray(tensor_pb2.TensorProto.FromString(kv[2][0]))
        out.append((signature, inputs, [f.decode() for f in request.get(3, [])]))
    return out


def _fields(data: bytes) -> dict[int, list[bytes]]:
    """Length-delimited fields of one protobuf message (the only kind these records hold)."""
    from google.protobuf.internal import decoder

    fields: dict[int, list[bytes]] = {}
    pos = 0
    while pos < len(data):
        key, pos = decoder._DecodeVarint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 2:
            size, pos = decoder._DecodeVarint(data, pos)
            fields.setdefault(number, []).append(data[pos : pos + size])
            pos += size
        elif wire == 0:
            _, pos = decoder._DecodeVarint(data, pos)
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"unexpected wire type {wire} in a warmup record")
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--list", action="store_true", help="print the graph's ops and exit")
    parser.add_argument(
        "--no-run", action="store_true", help="check ops and load only; skip the warmup records"
    )
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(graph_ops(args.version_dir)))
        return 0
    print(f"TensorFlow {tf.__version__}: {len(graph_ops(args.version_dir))} ops in the graph")
    problems = registry_problems(args.version_dir)
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        return 1
    print("ok   every op and attr is registered")
    records = warmup_records(args.version_dir)  # read eagerly, before the graph-mode Session
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(args.version_dir))
        print("ok   loaded into a TF1 Session, as TF Serving loads it")
        if args.no_run:
            return 0
        total = 0.0
        for signature, inputs, outputs in records:
            sig = meta.signature_def[signature]
            fetch = outputs or sorted(sig.outputs)
            feed = {sig.inputs[k].name: v for k, v in inputs.items()}
            start = time.perf_counter()
            session.run([sig.outputs[k].name for k in fetch], feed_dict=feed)
            seconds = time.perf_counter() - start
            total += seconds
            batch = len(next(iter(inputs.values())))
            print(f"     {signature:16} batch {batch:4}  {','.join(fetch):40} {seconds:8.2f} s")
        print(f"ok   ran {len(records)} warmup records through the Session in {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
