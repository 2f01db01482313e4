"""ViT inference side by side: jimm_linen (`jax.jit(apply)`), jimm_nnx (`nnx.jit`) and HF
PyTorch eager, on the same random-weight checkpoint saved by `transformers`.

Each contender runs in its own process (so one's threads, caches and allocator do not colour
another's numbers), contenders alternate over `--rounds`, and each round is a warm-up plus
`--steps` timed steps. After the first round every contender's logits are checked against
HF's; a disagreement stops the run before anything is recorded.

    python -m benchmarks.vit_inference                 # ViT-B/16, batch 8, 224px, float32
    python -m benchmarks.vit_inference --variant S/16 --batch 4

Appends one JSON line per contender and round to `benchmarks/results/vit_inference.jsonl`
and prints a markdown table of medians with ratios to HF PyTorch eager.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "vit_inference.jsonl"
CONTENDERS = ("hf_torch_eager", "jimm_linen", "jimm_nnx")
AGREE_RTOL = 1e-4  # float32 outputs of every contender vs HF, before timing


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("jax", "flax", "torch", "transformers")}


def _runner(contender: str, directory: Path, images_nchw):
    """A zero-argument function running one forward pass to completion, and its logits."""
    import numpy as np

    if contender == "hf_torch_eager":
        import torch

        from jimm_linen.parity import load_reference

        model = load_reference(directory)
        x = torch.from_numpy(images_nchw)

        def step():
            with torch.inference_mode():
                return model(x).logits.numpy()

        return step
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1)))
    if contender == "jimm_linen":
        import jimm_linen

        model, variables = jimm_linen.from_pretrained(directory)
        fwd = jax.jit(model.apply)
        return lambda: np.asarray(jax.block_until_ready(fwd(variables, x)))
    if contender == "jimm_nnx":
        from flax import nnx

        import jimm_nnx

        model = jimm_nnx.VisionTransformer.from_pretrained(directory, sharding=jimm_nnx.NoSharding())
        fwd = nnx.jit(lambda m, images: m(images))
        return lambda: np.asarray(jax.block_until_ready(fwd(model, x)))
    raise ValueError(f"unknown contender {contender!r}; choose from {CONTENDERS}")


def measure(contender: str, directory: Path, batch: int, size: int, steps: int) -> dict:
    import numpy as np

    from jimm_linen.parity import random_images

    images = random_images(batch, size, 3, seed=0)
    step = _runner(contender, directory, images)
    t0 = time.perf_counter()
    logits = step()  # first call: compile (JAX) or warm caches (torch)
    first = time.perf_counter() - t0
    step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    np.save(directory / f"logits-{contender}.npy", logits)
    return dict(contender=contender, batch=batch, first_call_s=first, median_s=statistics.median(times),
                min_s=min(times), max_s=max(times), images_per_s=batch / statistics.median(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="B/16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:  # one contender, in this process
        print(json.dumps(measure(args.worker, Path(args.dir), args.batch, args.image_size, args.steps)))
        return 0

    from jimm_linen import ViTConfig
    from jimm_linen.parity import build_vit_reference

    cfg = ViTConfig.from_variant(args.variant, image_size=args.image_size, num_labels=1000)
    hf_cfg = {k: v for k, v in cfg.to_hf_config().items() if k not in ("architectures", "model_type", "id2label", "label2id")}
    contenders = [c for c in args.contenders.split(",") if c]
    if "hf_torch_eager" not in contenders:
        raise SystemExit("hf_torch_eager is the reference every contender is checked against; keep it in --contenders")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        build_vit_reference({**hf_cfg, "num_labels": 1000}, directory, seed=0)
        for r in range(args.rounds):
            for c in contenders:
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.vit_inference", "--worker", c, "--dir", tmp,
                     "--batch", str(args.batch), "--image-size", str(args.image_size), "--steps", str(args.steps)],
                    capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
                rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "round": r})
            if r == 0:  # after the first round, before more timing: every contender agrees with HF
                check_agreement(directory, contenders)
    meta = dict(workload=f"vit-{args.variant}-inference", batch=args.batch, image_size=args.image_size,
                dtype="float32", steps=args.steps, machine=platform.machine(), cpu_count=_cpu_count(),
                versions=_versions(), date=time.strftime("%Y-%m-%d"))
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        for row in rows:
            f.write(json.dumps({**meta, **row}) + "\n")
    print(table(rows))
    return 0


def check_agreement(directory: Path, contenders: list[str]) -> None:
    import numpy as np

    ref = np.load(directory / "logits-hf_torch_eager.npy")
    for c in contenders:
        diff = np.abs(np.load(directory / f"logits-{c}.npy") - ref).max() / max(1.0, np.abs(ref).max())
        if diff > AGREE_RTOL:
            raise SystemExit(f"{c} disagrees with HF: rel diff {diff:.2e} > {AGREE_RTOL:g}; nothing recorded")


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))


def table(rows: list[dict]) -> str:
    by = {}
    for r in rows:
        by.setdefault(r["contender"], []).append(r)
    med = {c: statistics.median(x["median_s"] for x in rs) for c, rs in by.items()}
    base = med.get("hf_torch_eager")
    lines = ["| contender | median step (ms) | min-max over rounds (ms) | images/s | vs HF torch eager | first call (s) |",
             "|---|---|---|---|---|---|"]
    for c, rs in by.items():
        lo, hi = min(x["median_s"] for x in rs), max(x["median_s"] for x in rs)
        ratio = f"{base / med[c]:.2f}x" if base else "-"
        lines.append(f"| {c} | {med[c] * 1e3:.1f} | {lo * 1e3:.1f}-{hi * 1e3:.1f} | {rs[0]['batch'] / med[c]:.1f} | "
                     f"{ratio} | {statistics.median(x['first_call_s'] for x in rs):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
