"""`bench`: real exports of a tiny Conv-BN model, timed in-process (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import model_bench as bench
from benchmarks.model_bench_report import to_markdown
from model_builder import fold
from resnet_serving.cli import main

BUCKETS = (1, 2)
POINT_KEYS = {"variant", "precision", "xla", "fold", "batch", "calls", "images_per_s",
              "median_ms", "p99_ms", "first_call_s", "round_images_per_s",
              "images_per_cpu_s"}  # fmt: skip


def _tiny_conv_bn() -> Any:
    """Conv (linear) -> BN -> ReLU -> pool -> logits: the smallest model folding changes."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c1_conv")(inputs)
    x = keras.layers.BatchNormalization(name="c1_bn")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="predictions")(x))
    fold.randomize_batchnorm(model)
    return model


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """Three variants of one tiny model (each knob flipped once from the export default)."""
    variants = [
        bench.Variant("float32", xla=True, fold=False),
        bench.Variant("float32", xla=False, fold=False),
        bench.Variant("float32", xla=True, fold=True),
    ]
    run_info = bench.random_run_info("tiny_conv_bn", 8, 3)
    return bench.bench_model(_tiny_conv_bn(), run_info, variants, BUCKETS, seconds=0.04, rounds=2)


def test_report_has_a_point_per_variant_and_batch(report: dict[str, Any]) -> None:
    points = report["results"]
    assert len(points) == 3 * len(BUCKETS)
    assert {(p["xla"], p["fold"], p["batch"]) for p in points} == {
        (x, f, b) for x, f in ((True, False), (False, False), (True, True)) for b in BUCKETS
    }
    for p in points:
        assert set(p) == POINT_KEYS
        assert p["calls"] >= 2  # at least one timed call per round
        assert p["images_per_s"] > 0 and 0 < p["median_ms"] <= p["p99_ms"]
        assert len(p["round_images_per_s"]) == 2 and min(p["round_images_per_s"]) > 0
        assert p["images_per_cpu_s"] > 0
    json.loads(json.dumps(report))  # JSON-able as written by --out


@pytest.mark.parametrize("knob", ["xla on/off", "fold on/off"])
def test_ratios_pair_variants_that_differ_in_one_knob(report: dict[str, Any], knob: str) -> None:
    rows = [r for r in report["ratios"] if r["ratio"] == knob]
    assert sorted(r["batch"] for r in rows) == list(BUCKETS)
    points = {(p["variant"], p["batch"]): p for p in report["results"]}
    for r in rows:
        num, den = points[r["numerator"], r["batch"]], points[r["denominator"], r["batch"]]
        assert r["images_per_s"] == round(num["images_per_s"] / den["images_per_s"], 3)
        differ = {k for k in ("xla", "fold") if num[k] != den[k]}
        assert differ == {knob.split()[0]}
        per_round = [
            a / b for a, b in zip(num["round_images_per_s"], den["round_images_per_s"], strict=True)
        ]
        assert r["images_per_s_rounds"] == [round(min(per_round), 3), round(max(per_round), 3)]
        assert r["images_per_cpu_s"] == round(num["images_per_cpu_s"] / den["images_per_cpu_s"], 3)


def test_folded_export_matches_unfolded(report: dict[str, Any]) -> None:
    parity = report["fold_parity"]
    assert len(parity) == 1  # fold on vs off, both under XLA
    for row in parity:
        assert row["top1_agree"] == row["images"] == bench.PARITY_IMAGES
        assert row["max_abs_prob_diff"] < 1e-5 and row["max_rel_prob_diff"] < 1e-4


def test_markdown_has_the_three_tables(report: dict[str, Any]) -> None:
    text = to_markdown(report)
    assert "tiny_conv_bn 8x8" in text and "Ratios" in text and "parity" in text
    assert text.count("| float32 |") == 3 * len(BUCKETS)


def test_cli_times_an_existing_export_as_is(exported_model: Any, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    version_dir = exported_model.model_base / exported_model.name / str(exported_model.version)
    argv = ["bench", "--version-dir", str(version_dir), "--buckets", "1,2", "--seconds", "0.02"]
    assert main([*argv, "--out", str(out), "--markdown", str(tmp_path / "r.md")]) == 0
    written = json.loads(out.read_text())
    assert [(p["batch"], p["xla"], p["fold"]) for p in written["results"]] == [
        (1, True, True),  # export's defaults: XLA on, BatchNorm folded
        (2, True, True),
    ]
    assert written["ratios"] == [] and written["config"]["input"] == [8, 8]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--buckets", "8,1"], "buckets must be increasing"),
        (["--buckets", "0"], "buckets must be increasing"),
        (["--xla", "maybe"], "xla takes on, off"),
        (["--fold", ""], "fold takes on, off"),
        (["--precision", "int8"], "--precision takes"),
        (["--seconds", "0"], "--seconds must be > 0"),
    ],
)
def test_cli_refuses_bad_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--arch", "toy_cifar10", *argv]) == 2
    assert message in capsys.readouterr().err


def test_export_records_xla_off_in_manifest(tmp_path: Path) -> None:
    from contract.manifest import read_manifest
    from model_builder.export import export_model

    run_info = bench.random_run_info("tiny_conv_bn", 8, 3)
    version_dir = export_model(
        _tiny_conv_bn(), model_base=tmp_path, name="m", version=1, run_info=run_info,
        buckets=(1,), top_k=1, jit_compile=False,
    )  # fmt: skip
    assert read_manifest(version_dir).xla_compiled is False
