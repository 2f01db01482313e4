"""Side-by-side benchmarks: one entry point for every suite.

    python -m benchmarks.run --suite cpu                  # the full CPU suite (~30-40 min on 2 cores)
    python -m benchmarks.run --suite cpu --workloads vit_b16_infer,vit_b16_train --rounds 3
    python -m benchmarks.run --suite cpu --quick          # tiny config, 2 steps, 3 contenders: harness check
    python -m benchmarks.run --suite gpu --wheels DIR     # sets up .cache/gpu-venv from DIR's wheels, then runs
    python -m benchmarks.run --list                       # workloads and contenders

For each workload: the HF checkpoint is built once by `transformers` from the workload's config
with seeded random weights (no downloads) and every contender loads that directory. Each
contender runs in its own process (`benchmarks.worker`), contenders alternate (order reversed on
odd rounds), each run is a compile, `--warmup` untimed and `--steps` timed steps. After the
first round every entry's outputs (logits; for training the loss, the gradient's global norm and
the first step's loss) are compared with the workload's reference entry; a disagreement stops the
run before anything is recorded. Then one JSON line per entry is appended to `--results` (all
timed steps of all rounds pooled: median / min / max), and the tables in benchmarks/RESULTS.md and
the README's summary of them are regenerated from the latest run of each workload. The host's load
average is recorded before and after each workload, since other processes may compete for the
cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks import report
from benchmarks.workloads import AGREE_RTOL, SIDE_INSTALLED, Workload, cpu_suite, gpu_suite, peak_flops

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "results.jsonl"
README = REPO_ROOT / "README.md"
TABLES = Path(__file__).parent / "RESULTS.md"


class DisagreementError(SystemExit):
    pass


def check_agreement(outputs: dict[str, dict], reference: str, rtol: float) -> dict[str, float]:
    """Max relative difference of each entry's outputs to the reference's; raises
    `DisagreementError` naming every entry and output beyond `rtol`."""
    import numpy as np

    ref = outputs[reference]
    worst, bad = {}, []
    for name, out in outputs.items():
        if set(out) != set(ref):
            bad.append(f"{name}: outputs {sorted(out)} vs reference {sorted(ref)}")
            continue
        diffs = {}
        for k in ref:
            a, b = np.asarray(out[k], np.float64), np.asarray(ref[k], np.float64)
            if a.shape != b.shape:
                bad.append(f"{name}/{k}: shape {a.shape} vs {b.shape}")
                continue
            diffs[k] = float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))
            if not diffs[k] <= rtol:  # NaN fails too
                bad.append(f"{name}/{k}: rel diff {diffs[k]:.2e} > {rtol:g}")
        worst[name] = max(diffs.values(), default=0.0)
    if bad:
        raise DisagreementError(f"outputs disagree with {reference}; nothing recorded:\n  " + "\n  ".join(bad))
    return worst


def _side_folder(contender: str) -> Path | None:
    if contender not in SIDE_INSTALLED:
        return None
    from benchmarks import side_envs

    return side_envs.legacy_flax_dir() if contender == "legacy_hf_flax" else side_envs.ensure_jimm_lib()


def _run_worker(spec: dict, tmp: Path, timeout: int) -> dict:
    from benchmarks import side_envs

    spec_file = tmp / f"spec-{uuid.uuid4().hex[:8]}.json"
    spec_file.write_text(json.dumps(spec))
    env = side_envs.side_env(_side_folder(spec["contender"]))
    env.update(spec.get("env", {}))  # an entry's process-wide settings, e.g. GLIBC_TUNABLES
    proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", str(spec_file)], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{spec['label']} on {spec['workload']} failed (exit {proc.returncode}):\n"
                           f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def build_checkpoint(w: Workload, directory: Path, seed: int = 0) -> None:
    import numpy as np

    from jimm_nnx.reference import build_reference, build_vit_reference, random_images, random_text

    if w.model == "clip":  # a CLIPModel, NCHW images and (input_ids, attention_mask) for as many texts
        model = build_reference("clip", dict(w.hf_config), directory / "ckpt", seed=seed)
        v, t = model.config.vision_config, model.config.text_config
        np.save(directory / "images.npy", random_images(w.batch, v.image_size, v.num_channels, seed=seed))
        ids, mask = random_text(w.batch, t.max_position_embeddings, t.vocab_size, t.eos_token_id, t.pad_token_id,
                                seed=seed + 2)
        np.savez(directory / "text.npz", input_ids=ids, attention_mask=mask)
        return
    build_vit_reference(dict(w.hf_config), directory / "ckpt", seed=seed)
    cfg = w.hf_config
    np.save(directory / "images.npy", random_images(w.batch, cfg["image_size"], cfg.get("num_channels", 3), seed=seed))
    np.save(directory / "labels.npy", np.random.RandomState(seed + 1).randint(0, cfg["num_labels"], w.batch))


def run_workload(w: Workload, args, run_id: str, tmp: Path) -> list[dict]:
    rounds = w.rounds or args.rounds
    steps = w.steps or args.steps
    entries = [e for e in w.entries if not args.contenders or e.contender in args.contenders]
    if not entries:
        return []
    if w.task != "compile":
        build_checkpoint(w, tmp)
    base = dict(workload=w.name, task=w.task, batch=w.batch, dtype=w.dtype, warmup=args.warmup, steps=steps,
                checkpoint=str(tmp / "ckpt"), images=str(tmp / "images.npy"), labels=str(tmp / "labels.npy"),
                hf_config=w.hf_config)
    if w.model != "vit":
        base.update(model=w.model, text=str(tmp / "text.npz"))
    load_before = os.getloadavg()
    per_entry: dict[str, list[dict]] = {e.name: [] for e in entries}
    agreement: dict[str, float] = {}
    for r in range(rounds):
        order = entries if r % 2 == 0 else entries[::-1]
        for e in order:
            spec = dict(base, **e.options, contender=e.contender, label=e.name, out=str(tmp / "out" / e.name),
                        corrupt=e.contender in args.corrupt)
            t0 = time.perf_counter()
            row = _run_worker(spec, tmp, args.timeout)
            print(f"  [{w.name}] round {r} {e.name}: " + (
                f"compile {row['compile_s']:.2f}s" if w.task == "compile" else
                f"median {row['median_s'] * 1e3:.1f} ms (compile {row['compile_s']:.2f}s, "
                f"process {time.perf_counter() - t0:.0f}s)"), flush=True)
            per_entry[e.name].append(row)
        if r == 0 and w.reference and w.task != "compile":
            import numpy as np

            ref = w.reference if w.reference in per_entry else next(iter(per_entry))
            outs = {name: dict(np.load(tmp / "out" / name / "check.npz")) for name in per_entry}
            agreement = check_agreement(outs, ref, AGREE_RTOL[w.dtype])
            print(f"  [{w.name}] outputs agree with {ref} (max rel diff "
                  f"{max(agreement.values()):.1e} <= {AGREE_RTOL[w.dtype]:g})", flush=True)
    load_after = os.getloadavg()
    meta = dict(run_id=run_id, date=time.strftime("%Y-%m-%d %H:%M:%S"), suite=args.suite, quick=args.quick,
                workload=w.name, task=w.task, model=w.model, batch=w.batch, dtype=w.dtype, hf_config=w.hf_config,
                rounds=rounds, warmup=args.warmup, steps=steps, machine=platform.machine(),
                cpu_count=len(os.sched_getaffinity(0)), loadavg_before=load_before[:2], loadavg_after=load_after[:2],
                reference=w.reference, note=w.note)
    rows = []
    for e in entries:
        rs = per_entry[e.name]
        row = dict(meta, contender=e.contender, label=e.name, options=e.options, versions=rs[0]["versions"],
                   compile_s=statistics.median(x["compile_s"] for x in rs),
                   xla_peak_bytes=max((x["xla_peak_bytes"] for x in rs if x.get("xla_peak_bytes")), default=None),
                   max_rss_bytes=max(x["max_rss_bytes"] for x in rs))
        if w.task == "compile":
            row.update(lower_s=statistics.median(x["lower_s"] for x in rs),
                       xla_compile_s=statistics.median(x["xla_compile_s"] for x in rs))
        else:
            times = [t for x in rs for t in x["times_s"]]
            med = statistics.median(times)
            flops = w.flops()
            row.update(median_s=med, min_s=min(times), max_s=max(times),
                       round_medians_s=[x["median_s"] for x in rs], throughput=w.batch / med,
                       throughput_unit="images/s", model_flops=flops, achieved_flops_per_s=flops / med,
                       xla_flops=rs[0].get("xla_flops"), agreement_rel_diff=agreement.get(e.name),
                       load_s=statistics.median(x["load_s"] for x in rs),
                       minor_faults_per_step=statistics.median(x.get("minor_faults_per_step", 0) for x in rs))
            kind = rs[0].get("device_kind")
            if kind and peak_flops(kind):
                row.update(device_kind=kind, mfu=flops / med / peak_flops(kind))
        rows.append(row)
    return rows


def _setup_gpu_venv(wheels: Path) -> Path:
    """A venv under .cache/gpu-venv with everything installed from `wheels` (no index): the GPU
    machine may have no package registry. Returns its python."""
    venv = REPO_ROOT / ".cache" / "gpu-venv"
    py = venv / "bin" / "python"
    stamp = venv / ".jimm-gpu-stamp"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        reqs = Path(__file__).parent / "gpu-requirements.txt"
        subprocess.run([str(py), "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "-r", str(reqs)],
                       check=True)
        stamp.write_text(str(wheels))
    return py


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny config, 2 steps, 1 round, 3 contenders")
    p.add_argument("--workloads", default="", help="comma list (default: every ready workload of the suite)")
    p.add_argument("--contenders", default="", help="comma list to restrict to")
    p.add_argument("--rounds", type=int, default=None, help="default 2 (1 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run, default 10 (2 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after compile, default 2 (1 with --quick)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--tables", type=Path, default=TABLES, help="file whose full benchmark tables are regenerated")
    p.add_argument("--readme", type=Path, default=README, help="file whose benchmark summary is regenerated")
    p.add_argument("--no-docs", "--no-readme", dest="no_docs", action="store_true",
                   help="regenerate neither --tables nor --readme")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per worker process")
    p.add_argument("--wheels", type=Path, help="GPU suite: install a venv from these wheels first")
    p.add_argument("--allow-cpu", action="store_true", help="GPU suite on CPU (logic check only, with --quick)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--corrupt", default="", help=argparse.SUPPRESS)  # test hook
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.steps = args.steps or (2 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.contenders = [c for c in args.contenders.split(",") if c]
    args.corrupt = [c for c in args.corrupt.split(",") if c]

    if args.suite == "gpu" and args.wheels:
        py = _setup_gpu_venv(args.wheels)
        rest = [a for a in (argv if argv is not None else sys.argv[1:])]
        i = rest.index("--wheels")
        del rest[i:i + 2]
        return subprocess.run([str(py), "-m", "benchmarks.run", *rest], cwd=REPO_ROOT).returncode

    suite = (cpu_suite if args.suite == "cpu" else gpu_suite)(args.quick)
    if args.list:
        for w in suite:
            print(f"{w.name:28s} {w.task:8s} {w.status:8s} {', '.join(e.name for e in w.entries)} {w.note}")
        return 0
    wanted = [n for n in args.workloads.split(",") if n]
    unknown = set(wanted) - {w.name for w in suite}
    if unknown:
        raise SystemExit(f"unknown workloads {sorted(unknown)}; --list shows them")
    if args.suite == "gpu":
        import jax

        if jax.default_backend() != "gpu" and not args.allow_cpu:
            raise SystemExit(f"--suite gpu needs a GPU (jax sees {jax.default_backend()}); --allow-cpu --quick "
                             "runs its logic on CPU")
        if jax.default_backend() != "gpu":
            suite = [_on_cpu(w) for w in suite]

    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    all_rows = []
    for w in suite:
        if wanted and w.name not in wanted:
            continue
        if w.status != "ready":
            print(f"[{w.name}] {w.status}: {w.note}")
            continue
        print(f"[{w.name}] {w.task}, batch {w.batch}, {w.dtype} (load avg {os.getloadavg()[0]:.2f})", flush=True)
        with tempfile.TemporaryDirectory(prefix="jimm-bench-") as tmp:
            rows = run_workload(w, args, run_id, Path(tmp))
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        all_rows += rows
        print(report.workload_table(rows), flush=True)
    if not args.no_docs and all_rows:
        report.update_docs(args.results, args.tables, args.readme)
    return 0


def _on_cpu(w: Workload) -> Workload:
    """The GPU suite's logic on CPU: drop device options and backends that need a GPU."""
    import dataclasses

    from benchmarks.workloads import Entry

    entries = []
    for e in w.entries:
        if e.options.get("attention") in ("mosaic", "triton", "cudnn"):
            continue
        opts = {k: v for k, v in e.options.items() if k != "device"}
        contender = "hf_torch_eager" if e.contender == "hf_torch_sdpa_compile" else e.contender
        entries.append(Entry(contender, e.label, opts))
    ref = "hf_torch_eager" if w.reference == "hf_torch_sdpa_compile" else w.reference
    return dataclasses.replace(w, entries=tuple(entries), reference=ref)


if __name__ == "__main__":
    sys.exit(main())
