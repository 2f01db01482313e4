"""Side-by-side benchmarks: one entry point for every suite.

    python -m benchmarks.run --suite cpu                  # the full CPU suite (~30-40 min on 2 cores)
    python -m benchmarks.run --suite cpu --workloads vit_b16_infer,vit_b16_train --rounds 3
    python -m benchmarks.run --suite cpu --quick          # tiny config, 2 steps, 3 contenders: harness check
    python -m benchmarks.run --suite gpu --keep-going     # on a GPU: ViT and decoders (Llama-3.2-1B, Qwen3-0.6B), bf16
    python -m benchmarks.run --suite gpu --wheels DIR     # sets up .cache/gpu-venv from DIR's wheels, then runs
    python -m benchmarks.run --suite gpu --quick --allow-cpu   # its logic on CPU: tiny configs, GPU-only backends dropped
    python -m benchmarks.run --suite llm                  # decoders: greedy decode, prefill, training step
    python -m benchmarks.run --suite llm --workloads llama_decode_b1,llama_decode_b16,llama_prefill
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

Before its first decoder workload (`--suite llm`, and the decoders of `--suite gpu`), a run
measures the host's limits in a process of its own (`benchmarks.machine`: triad memory
bandwidth, float32 and bf16 GEMM peak; the GPU's, on a GPU) and records them as a JSON line;
each decoder row then carries its share of them: a decode row the bytes a step must read
(`workloads.decode_bytes_per_step`) x steady steps/s (a whole call minus a one-token call, per
further token) over the measured bandwidth, a prefill or training
row its model FLOP/s (`workloads.decoder_flops`) over the measured GEMM peak of its dtype (and,
on a GPU, over its datasheet peak). float32 generated tokens must be identical across
contenders (exactly, not within a tolerance); bf16 decodes are compared on forced steps' logits
(`benchmarks.llm.decode_check`).
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
from benchmarks.workloads import (AGREE_RTOL, SIDE_INSTALLED, Workload, cpu_suite, decode_bytes_per_step, gpu_suite,
                                  llm_suite, peak_flops)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "results.jsonl"
README = REPO_ROOT / "README.md"
TABLES = Path(__file__).parent / "RESULTS.md"


class DisagreementError(SystemExit):
    pass


def check_agreement(outputs: dict[str, dict], reference: str, rtol: float) -> dict[str, float]:
    """Max relative difference of each entry's outputs to the reference's; raises
    `DisagreementError` naming every entry and output beyond `rtol`. Integer outputs (generated
    tokens) must be equal: their relative difference is the fraction of entries that differ."""
    import numpy as np

    ref = outputs[reference]
    worst, bad = {}, []
    for name, out in outputs.items():
        if set(out) != set(ref):
            bad.append(f"{name}: outputs {sorted(out)} vs reference {sorted(ref)}")
            continue
        diffs = {}
        for k in ref:
            a, b = np.asarray(out[k]), np.asarray(ref[k])
            if a.shape != b.shape:
                bad.append(f"{name}/{k}: shape {a.shape} vs {b.shape}")
                continue
            if np.issubdtype(b.dtype, np.integer):
                diffs[k] = float(np.mean(a != b))
                if diffs[k]:
                    first = tuple(int(i) for i in np.argwhere(a != b)[0])
                    bad.append(f"{name}/{k}: {np.sum(a != b)} of {a.size} differ, first at {first}")
                continue
            a, b = a.astype(np.float64), b.astype(np.float64)
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
        how = f"exit {proc.returncode}" + (f", killed by signal {-proc.returncode}" if proc.returncode < 0 else "")
        raise RuntimeError(f"{spec['label']} on {spec['workload']} failed ({how}):\n"
                           f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def build_checkpoint(w: Workload, directory: Path, seed: int = 0) -> None:
    import numpy as np

    from jimm_nnx.reference import build_reference, build_vit_reference, random_images, random_text

    if w.decoder:  # seeded random weights (every tensor, `randomize_`), token ids, the decode check's forced ones
        from benchmarks.llm import CHECK_DECODE_STEPS

        build_reference(w.model, dict(w.hf_config), directory / "ckpt", seed=seed)
        rs = np.random.RandomState(seed + 1)
        ids = rs.randint(0, w.hf_config["vocab_size"], (w.batch, w.seq))
        forced = rs.randint(0, w.hf_config["vocab_size"], (w.batch, CHECK_DECODE_STEPS))
        np.savez(directory / "tokens.npz", ids=ids.astype(np.int32), forced=forced.astype(np.int32))
        return
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


def decoder_metrics(w: Workload, step_s: float, limits: dict | None, datasheet_peak: float | None = None,
                    first_token_s: float | None = None) -> dict:
    """A decoder row's throughput and its share of the host's measured limits (`limits`: the
    run's `benchmarks.machine` row). Decode: one step is one generate call of `new_tokens`
    decode steps, its prefill included (`ms_per_token`, `throughput`: per token of the whole
    call); with `first_token_s`, the same call for one new token (prefill, the first step and
    the call's fixed costs), the decode loop's steady step is `decode_step_s` = (call -
    first_token_s) / (new_tokens - 1), and `bandwidth_fraction` is the bytes a step must read
    (`workloads.decode_bytes_per_step`) per steady step over the measured bandwidth (without
    it, per whole-call token: a lower bound); prefill / train: MFU = model FLOP/s over the
    measured GEMM peak of the dtype, and `datasheet_mfu` over `datasheet_peak` (the device's
    dense bf16 peak, `workloads.peak_flops`: what the ViT GPU rows' `mfu` is over) where there
    is one."""
    out = {}
    if w.task == "decode":
        steps_per_s = w.new_tokens / step_s
        out.update(throughput=w.batch * steps_per_s, throughput_unit="tokens/s", ms_per_token=1e3 / steps_per_s,
                   decode_bytes_per_step=decode_bytes_per_step(w.hf_config, w.batch, w.seq, w.new_tokens,
                                                               2 if w.dtype == "bfloat16" else 4))
        if first_token_s is not None:
            out["first_token_s"] = first_token_s
            # On a tiny model host noise can make the one-token call the slower: no steady step then.
            if w.new_tokens > 1 and step_s > first_token_s:
                out["decode_step_s"] = (step_s - first_token_s) / (w.new_tokens - 1)
                steps_per_s = 1 / out["decode_step_s"]
        if limits:
            out["bandwidth_fraction"] = out["decode_bytes_per_step"] * steps_per_s / limits["bandwidth_bytes_per_s"]
    else:
        out.update(throughput=w.batch * w.seq / step_s, throughput_unit="tokens/s")
        if limits:
            out["mfu"] = w.flops() / step_s / limits[f"gemm_{w.dtype}_flops_per_s"]
        if datasheet_peak:
            out["datasheet_mfu"] = w.flops() / step_s / datasheet_peak
    if limits:
        out["limits_run_id"] = limits["run_id"]
    return out


def measure_limits(args, run_id: str) -> dict:
    """`benchmarks.machine` in its own process; its row (workload `machine`) is appended to the
    results at once."""
    cmd = [sys.executable, "-m", "benchmarks.machine"] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmarks.machine failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    row = dict(json.loads(lines[-1][len("RESULT "):]), run_id=run_id, date=time.strftime("%Y-%m-%d %H:%M:%S"),
               suite=args.suite, quick=args.quick, workload="machine", task="machine", label="machine",
               contender="machine", machine=platform.machine())
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"[machine] triad {row['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, GEMM {row['gemm_n']}^2 float32 "
          f"{row['gemm_float32_flops_per_s'] / 1e9:.0f} / bf16 {row['gemm_bfloat16_flops_per_s'] / 1e9:.0f} GFLOP/s "
          f"(load avg {row['loadavg'][0]:.2f})", flush=True)
    return row


def run_workload(w: Workload, args, run_id: str, tmp: Path, limits: dict | None = None) -> list[dict]:
    rounds = args.rounds or w.rounds or (1 if args.quick else 2)
    steps = args.steps or w.steps or (2 if args.quick else 10)
    warmup = args.warmup if w.warmup is None else w.warmup
    entries = [e for e in w.entries if not args.contenders or e.contender in args.contenders]
    if not entries:
        return []
    if w.task != "compile":
        build_checkpoint(w, tmp)
    base = dict(workload=w.name, task=w.task, batch=w.batch, dtype=w.dtype, warmup=warmup, steps=steps,
                checkpoint=str(tmp / "ckpt"), images=str(tmp / "images.npy"), labels=str(tmp / "labels.npy"),
                hf_config=w.hf_config)
    if w.model != "vit":
        base.update(model=w.model, text=str(tmp / "text.npz"), tokens=str(tmp / "tokens.npz"), seq=w.seq,
                    new_tokens=w.new_tokens)
    load_before = os.getloadavg()
    per_entry: dict[str, list[dict]] = {e.name: [] for e in entries}
    agreement: dict[str, float] = {}
    failed: dict[str, str] = {}
    for r in range(rounds):
        order = entries if r % 2 == 0 else entries[::-1]
        for e in order:
            spec = dict(base, **e.options, contender=e.contender, label=e.name, out=str(tmp / "out" / e.name),
                        corrupt=e.contender in args.corrupt, fail=e.contender in args.fail)
            t0 = time.perf_counter()
            if e.name in failed:
                continue
            try:
                row = _run_worker(spec, tmp, args.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                if not args.keep_going:
                    raise
                failed[e.name] = str(err)[-2000:]
                del per_entry[e.name]
                print(f"  [{w.name}] round {r} {e.name} FAILED, left out:\n{failed[e.name]}", flush=True)
                continue
            print(f"  [{w.name}] round {r} {e.name}: " + (
                f"compile {row['compile_s']:.2f}s" if w.task == "compile" else
                f"median {row['median_s'] * 1e3:.1f} ms (compile {row['compile_s']:.2f}s, "
                f"process {time.perf_counter() - t0:.0f}s)"), flush=True)
            per_entry[e.name].append(row)
        if r == 0 and w.reference and w.task != "compile" and per_entry:
            import numpy as np

            ref = w.reference if w.reference in per_entry else next(iter(per_entry))
            outs = {name: dict(np.load(tmp / "out" / name / "check.npz")) for name in per_entry}
            agreement = check_agreement(outs, ref, AGREE_RTOL[w.dtype])
            print(f"  [{w.name}] outputs agree with {ref} (max rel diff "
                  f"{max(agreement.values()):.1e} <= {AGREE_RTOL[w.dtype]:g})", flush=True)
    load_after = os.getloadavg()
    meta = dict(run_id=run_id, date=time.strftime("%Y-%m-%d %H:%M:%S"), suite=args.suite, quick=args.quick,
                workload=w.name, task=w.task, model=w.model, batch=w.batch, dtype=w.dtype, hf_config=w.hf_config,
                rounds=rounds, warmup=warmup, steps=steps, machine=platform.machine(),
                cpu_count=len(os.sched_getaffinity(0)), loadavg_before=load_before[:2], loadavg_after=load_after[:2],
                reference=w.reference, note=w.note, failed=failed)
    rows = []
    for e in entries:
        if e.name in failed:
            continue
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
            flops = None if w.task == "decode" else w.flops()  # a decode call's FLOPs are not what limits it
            row.update(median_s=med, min_s=min(times), max_s=max(times),
                       round_medians_s=[x["median_s"] for x in rs], throughput=w.batch / med,
                       throughput_unit="images/s", model_flops=flops,
                       achieved_flops_per_s=None if flops is None else flops / med,
                       xla_flops=rs[0].get("xla_flops"), agreement_rel_diff=agreement.get(e.name),
                       load_s=statistics.median(x["load_s"] for x in rs),
                       minor_faults_per_step=statistics.median(x.get("minor_faults_per_step", 0) for x in rs))
            kind = rs[0].get("device_kind")
            peak = peak_flops(kind) if kind and w.dtype == "bfloat16" else None  # a bf16 datasheet peak
            if w.decoder:
                first = [t for x in rs for t in x.get("first_token_times_s") or ()]
                row.update(decoder_metrics(w, med, limits, peak, statistics.median(first) if first else None),
                           device_kind=kind, seq=w.seq,
                           new_tokens=w.new_tokens, first_call_s=statistics.median(x["first_call_s"] for x in rs))
            elif peak and flops:
                row.update(device_kind=kind, mfu=flops / med / peak)
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
    p.add_argument("--suite", choices=("cpu", "gpu", "llm"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny config, 2 steps, 1 round, 3 contenders")
    p.add_argument("--workloads", default="", help="comma list (default: every ready workload of the suite)")
    p.add_argument("--contenders", default="", help="comma list to restrict to")
    p.add_argument("--rounds", type=int, default=None,
                   help="overrides the workload's own; default 2 (1 with --quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per run, overrides the workload's own; default 10 (2 with --quick)")
    p.add_argument("--keep-going", action="store_true",
                   help="a contender whose process fails is reported, recorded as failed and left out of its "
                        "workload instead of stopping the run")
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
    p.add_argument("--fail", default="", help=argparse.SUPPRESS)  # test hook: these contenders' processes fail
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.contenders = [c for c in args.contenders.split(",") if c]
    args.corrupt = [c for c in args.corrupt.split(",") if c]
    args.fail = [c for c in args.fail.split(",") if c]

    if args.suite == "gpu" and args.wheels:
        py = _setup_gpu_venv(args.wheels)
        rest = [a for a in (argv if argv is not None else sys.argv[1:])]
        i = rest.index("--wheels")
        del rest[i:i + 2]
        return subprocess.run([str(py), "-m", "benchmarks.run", *rest], cwd=REPO_ROOT).returncode

    suite = {"cpu": cpu_suite, "gpu": gpu_suite, "llm": llm_suite}[args.suite](args.quick)
    if args.list:
        for w in suite:
            print(f"{w.name:32s} {w.task:8s} {w.status:8s} {', '.join(e.name for e in w.entries)} {w.note}")
        return 0
    wanted = [n for n in args.workloads.split(",") if n]
    unknown = set(wanted) - {w.name for w in suite}
    if unknown:
        raise SystemExit(f"unknown workloads {sorted(unknown)}; --list shows them")
    if args.suite == "gpu":
        backend = jax_backend()
        if backend != "gpu" and not args.allow_cpu:
            raise SystemExit(f"--suite gpu needs a GPU (jax sees {backend}); --allow-cpu --quick "
                             "runs its logic on CPU")
        if backend != "gpu":
            suite = [_on_cpu(w) for w in suite]

    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    all_rows = []
    limits = None
    if wanted:  # in the order asked for
        suite = sorted((w for w in suite if w.name in wanted), key=lambda w: wanted.index(w.name))
    for w in suite:
        if wanted and w.name not in wanted:
            continue
        if w.status != "ready":
            print(f"[{w.name}] {w.status}: {w.note}")
            continue
        print(f"[{w.name}] {w.task}, batch {w.batch}, {w.dtype} (load avg {os.getloadavg()[0]:.2f})", flush=True)
        if w.decoder and limits is None:
            limits = measure_limits(args, run_id)
        with tempfile.TemporaryDirectory(prefix="jimm-bench-") as tmp:
            rows = run_workload(w, args, run_id, Path(tmp), limits)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        all_rows += rows
        print(report.workload_table(rows), flush=True)
    if not args.no_docs and all_rows:
        report.update_docs(args.results, args.tables, args.readme)
    return 0


def jax_backend() -> str:
    """`jax.default_backend()`, asked in a process of its own: starting JAX's GPU client here
    would hold 75% of the GPU's memory (XLA preallocates it) for the whole run, under every
    contender's process."""
    proc = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"asking jax for its backend failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout.split()[-1]


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
