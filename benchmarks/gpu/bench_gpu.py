"""ResNet-50 inference on one GPU: our Keras 3 model on JAX/XLA beside torchvision on PyTorch.

Keras 3 model on JAX/XLA, not TF Serving. The model is `model_builder.resnet.build_model` with
random weights (BatchNorm statistics randomised too, so folding is a real change), run as a
`jax.jit`-compiled stateless function: uint8 NHWC images on the device -> /255 -> model ->
softmax (float32) -> top-5, i.e. the numeric core of our export. Variants: float32 and
mixed_bfloat16, each with and without `model_builder.fold.fold_batchnorm`. The peer in the
same run: torchvision ResNet-50 (random weights), bf16, channels-last, eager and
`torch.compile`, with the same uint8-in, top-5-out function around it.

Per point: warmup calls (the first compiles) are not timed; latency is the median and p99 of
`--iters` synchronous calls (host timer around call + block_until_ready / cuda.synchronize);
images/s comes from `--iters` calls issued back to back with one wait at the end (steady
state). Two input buffers alternate. Results go to ONE JSON file, rewritten after every point
so a run cut short still leaves what it measured: `$OUT/gpu_results.json` when OUT is set.

Needs no TensorFlow: only keras (JAX backend), jax, numpy, and torch/torchvision for the peer.
Validate on a CPU: `--platform cpu --batches 1,2 --input-size 64 --iters 2`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LABEL = "Keras 3 model on JAX/XLA, not TF Serving"
GFLOP_PER_IMAGE_224 = 8.2  # ResNet-50 forward, 2 x 4.1 GMAC at 224x224
PEAK_TFLOPS_BF16 = 800.0  # H100/H200 dense bf16, as measured here (~790)
TARGETS = {"bf16_batch256_images_per_s_min": 30000, "batch1_median_ms_max": 1.0}
TOP_K = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--batches", default="1,8,32,64,128,256")
    p.add_argument("--iters", type=int, default=50, help="timed calls per point (each mode)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per point")
    p.add_argument(
        "--keras",
        default="bfloat16:off,bfloat16:on,float32:off,float32:on",
        help="Keras variants precision:fold, in run order ('' for none)",
    )
    p.add_argument("--torch", default="eager,compile", help="torch modes ('' for none)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (max-autotune)")
    p.add_argument("--platform", default="", help="'cpu' forces JAX and torch onto the CPU")
    p.add_argument(
        "--budget-s",
        type=float,
        default=540.0,
        help="skip points once this many seconds have passed (recorded as skipped)",
    )
    p.add_argument("--out", type=Path, help="JSON path (default $OUT/gpu_results.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before jax/keras are imported: backend, and no up-front grab of GPU memory (torch shares it).
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.platform == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # our model_builder
    out = args.out or Path(os.environ.get("OUT", ".")) / "gpu_results.json"
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    limit = PEAK_TFLOPS_BF16 * 1e3 / (GFLOP_PER_IMAGE_224 * (args.input_size / 224) ** 2)
    result: dict[str, Any] = {
        "label": LABEL,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "config": {**{k: str(v) for k, v in vars(args).items()}, "batches": batches},
        "compute_limit": {
            "gflop_per_image": round(GFLOP_PER_IMAGE_224 * (args.input_size / 224) ** 2, 3),
            "peak_tflops_bf16": PEAK_TFLOPS_BF16,
            "images_per_s": round(limit),
        },
        "targets": TARGETS,
        "environment": {"python": platform.python_version()},
        "rows": [],
        "parity": [],
        "skipped": [],
        "errors": [],
    }
    start = time.perf_counter()

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    def over_budget() -> bool:
        return time.perf_counter() - start > args.budget_s

    print(
        f"{LABEL}; compute-bound limit {limit:,.0f} images/s "
        f"({result['compute_limit']['gflop_per_image']} GFLOP/image at {PEAK_TFLOPS_BF16:.0f} "
        f"TFLOP/s bf16)",
        flush=True,
    )
    keras_variants = [v.split(":") for v in args.keras.split(",") if v.strip()]
    torch_modes = [m.strip() for m in args.torch.split(",") if m.strip()]
    state: dict[str, Any] = {"reference": {}}  # the Keras base model and parity outputs
    # Order by priority so a run cut short by --budget-s still has the side-by-side pair:
    # the first Keras variant, then the torchvision peer, then the other Keras variants.
    steps: list[tuple[str, Callable[[], None]]] = []
    if keras_variants:
        steps.append(
            (
                "keras",
                lambda: run_keras(
                    args, batches, keras_variants[:1], result, save, over_budget, limit, state
                ),
            )
        )
    if torch_modes:
        steps.append(
            (
                "torch",
                lambda: run_torch(args, batches, torch_modes, result, save, over_budget, limit),
            )
        )
    if keras_variants[1:]:
        steps.append(
            (
                "keras",
                lambda: run_keras(
                    args, batches, keras_variants[1:], result, save, over_budget, limit, state
                ),
            )
        )
    for where, step in steps:
        _guard(result, where, step)
    _parity(result, state["reference"])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    save()
    print_table(result)
    print(f"wrote {out}")
    return 0


def _guard(result: dict[str, Any], where: str, fn: Callable[[], None]) -> None:
    """Run one framework's part; a failure is recorded and the other part still runs."""
    try:
        fn()
    except Exception as exc:  # record and go on: one JSON with everything that did run
        result["errors"].append(
            {"where": where, "error": repr(exc), "traceback": traceback.format_exc(limit=8)}
        )
        print(f"[{where}] failed: {exc!r}", flush=True)


def time_point(
    call: Callable[[int], Any], wait: Callable[[Any], None], iters: int, warmup: int
) -> dict[str, float]:
    """Compile/warm, then sync latency (median, p99) and pipelined images/s per call."""
    import numpy as np

    t0 = time.perf_counter()
    wait(call(0))
    first = time.perf_counter() - t0
    for i in range(warmup):
        wait(call(i))
    lat = []
    for i in range(iters):
        t0 = time.perf_counter()
        wait(call(i))
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    last = None
    for i in range(iters):
        last = call(i)
    wait(last)
    pipelined = (time.perf_counter() - t0) / iters
    arr = np.asarray(lat)
    return {
        "first_call_s": first,
        "median_ms": 1e3 * float(np.median(arr)),
        "p99_ms": 1e3 * float(np.percentile(arr, 99)),
        "s_per_call_pipelined": pipelined,
    }


def _row(
    result: dict[str, Any], limit: float, batch: int, iters: int, t: dict[str, float], **what: Any
) -> None:
    ips = batch / t["s_per_call_pipelined"]
    row = {
        **what,
        "batch": batch,
        "iters": iters,
        "images_per_s": round(ips, 1),
        "median_ms": round(t["median_ms"], 3),
        "p99_ms": round(t["p99_ms"], 3),
        "first_call_s": round(t["first_call_s"], 2),
        "fraction_of_bf16_limit": round(ips / limit, 4),
    }
    result["rows"].append(row)
    print(
        f"  {row['framework']:<22} {row['variant']:<24} b={batch:<4} {ips:>10,.1f} img/s  "
        f"median {t['median_ms']:.3f} ms  p99 {t['p99_ms']:.3f} ms  "
        f"({100 * ips / limit:.1f}% of limit)",
        flush=True,
    )


# ----------------------------------------------------------------------------- Keras / JAX


def run_keras(
    args: argparse.Namespace,
    batches: list[int],
    variants: list[list[str]],
    result: dict[str, Any],
    save: Callable[[], None],
    over_budget: Callable[[], bool],
    limit: float,
    state: dict[str, Any],
) -> None:
    # jax, keras and torch are imported where used: a run may skip either framework.
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np

    from model_builder.fold import fold_batchnorm, randomize_batchnorm
    from model_builder.resnet import build_model

    result["environment"].update(
        jax=jax.__version__,
        keras=keras.__version__,
        keras_backend=keras.backend.backend(),
        jax_devices=[str(d) for d in jax.devices()],
    )
    if "base" not in state:
        keras.utils.set_random_seed(0)
        state["base"] = build_model(args.arch, input_size=args.input_size)
        randomize_batchnorm(state["base"])
    base = state["base"]
    size = args.input_size
    rng = np.random.default_rng(0)
    parity_images = jnp.asarray(rng.integers(0, 256, (8, size, size, 3), np.uint8))
    reference: dict[str, np.ndarray] = state["reference"]
    for precision, fold in variants:
        model = fold_batchnorm(base) if fold == "on" else base
        if precision != "float32":
            model = cast_precision(model, precision)
        infer = make_jax_infer(model)
        params = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        )
        name = f"{precision} fold={fold}"
        probs = np.asarray(infer(*params, parity_images)[0], np.float64)
        reference[name] = probs
        for b in batches:
            if over_budget():
                result["skipped"].append(f"keras {name} batch {b}: over --budget-s")
                continue
            bufs = [
                jax.device_put(rng.integers(0, 256, (b, size, size, 3), np.uint8)) for _ in range(2)
            ]
            t = time_point(
                lambda i, f=infer, p=params, bufs=bufs: f(*p, bufs[i % 2]),  # type: ignore[misc]
                lambda o: jax.block_until_ready(o),
                args.iters,
                args.warmup,
            )
            _row(
                result,
                limit,
                b,
                args.iters,
                t,
                framework="keras3-jax-xla",
                variant=name,
                precision=precision,
                fold=fold == "on",
            )
            save()


def make_jax_infer(model: Any) -> Callable[..., Any]:
    """jit(uint8 NHWC -> probabilities, top-k ids, top-k scores), variables as arguments."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def infer(trainable: Any, non_trainable: Any, images: Any) -> Any:
        x = images.astype(jnp.float32) * (1.0 / 255.0)  # Normalization() of our exports
        logits, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        scores, ids = jax.lax.top_k(probs, TOP_K)
        return probs, ids, scores

    return infer


def cast_precision(model: Any, precision: str) -> Any:
    """Clone under the mixed policy (float32 variables, bf16 compute), as our export does."""
    import keras

    policy = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[precision]

    def clone(layer: Any) -> Any:
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        config = layer.get_config()
        config["dtype"] = policy
        return layer.__class__.from_config(config)

    cloned = keras.models.clone_model(model, clone_function=clone)
    cloned.set_weights(model.get_weights())
    return cloned


def _parity(result: dict[str, Any], reference: dict[str, Any]) -> None:
    """Each variant against `float32 fold=off`: top-1 agreement, max prob difference."""
    import numpy as np

    base = reference.get("float32 fold=off")
    if base is None:
        return
    for name, probs in reference.items():
        if name != "float32 fold=off":
            result["parity"].append(
                {
                    "variant": name,
                    "against": "float32 fold=off",
                    "images": len(base),
                    "top1_agree": int((probs.argmax(-1) == base.argmax(-1)).sum()),
                    "max_abs_prob_diff": float(np.abs(probs - base).max()),
                    "rel_l2": float(np.linalg.norm(probs - base) / np.linalg.norm(base)),
                }
            )


# ------------------------------------------------------------------------ torchvision peer


def run_torch(
    args: argparse.Namespace,
    batches: list[int],
    modes: list[str],
    result: dict[str, Any],
    save: Callable[[], None],
    over_budget: Callable[[], bool],
    limit: float,
) -> None:
    import torch
    import torchvision

    device = "cuda" if args.platform != "cpu" and torch.cuda.is_available() else "cpu"
    result["environment"].update(
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        torch_device=device,
        gpu=torch.cuda.get_device_name(0) if device == "cuda" else None,
    )
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    net = torchvision.models.resnet50(weights=None).eval()
    net = net.to(device=device, dtype=torch.bfloat16, memory_format=torch.channels_last)

    def fn(images: Any) -> Any:
        # uint8 NHWC permuted to NCHW is already channels-last in memory: no copy.
        x = images.permute(0, 3, 1, 2).to(torch.bfloat16) * (1.0 / 255.0)
        probs = torch.softmax(net(x).float(), dim=-1)
        scores, ids = torch.topk(probs, TOP_K)
        return probs, ids, scores

    wait = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
    for mode in modes:
        if mode == "eager":
            call_fn, variant = fn, "bf16 channels-last eager"
        else:
            call_fn = torch.compile(fn, mode=args.compile_mode)
            variant = f"bf16 channels-last compile({args.compile_mode})"
        for b in batches:
            if over_budget():
                result["skipped"].append(f"torch {variant} batch {b}: over --budget-s")
                continue
            bufs = [
                torch.randint(
                    0,
                    256,
                    (b, args.input_size, args.input_size, 3),
                    dtype=torch.uint8,
                    device=device,
                )
                for _ in range(2)
            ]
            with torch.inference_mode():
                t = time_point(
                    lambda i, f=call_fn, bufs=bufs: f(bufs[i % 2]),  # type: ignore[misc]
                    wait,
                    args.iters,
                    args.warmup,
                )
            _row(
                result,
                limit,
                b,
                args.iters,
                t,
                framework="torchvision",
                variant=variant,
                precision="bfloat16",
                fold=False,
            )
            save()


def print_table(result: dict[str, Any]) -> None:
    """The short table last, so the device tool's output tail carries it."""
    print(
        f"\n{result['label']} | limit {result['compute_limit']['images_per_s']:,} images/s "
        f"(bf16 compute-bound) | {result['environment']}"
    )
    print(
        f"{'framework':<22} {'variant':<36} {'batch':>5} {'images/s':>11} {'median ms':>10} "
        f"{'p99 ms':>9} {'% limit':>8}"
    )
    for r in result["rows"]:
        print(
            f"{r['framework']:<22} {r['variant']:<36} {r['batch']:>5} {r['images_per_s']:>11,.1f}"
            f" {r['median_ms']:>10.3f} {r['p99_ms']:>9.3f} "
            f"{100 * r['fraction_of_bf16_limit']:>7.1f}%"
        )
    for p in result["parity"]:
        print(
            f"parity {p['variant']} vs {p['against']}: top-1 {p['top1_agree']}/{p['images']}, "
            f"max |dprob| {p['max_abs_prob_diff']:.2e}"
        )
    for s in result["skipped"]:
        print(f"skipped: {s}")
    for e in result["errors"]:
        print(f"error in {e['where']}: {e['error']}")


if __name__ == "__main__":
    sys.exit(main())
