"""The benchmark harness end to end on a tiny config (no side installs), its agreement check,
the tables it regenerates in benchmarks/RESULTS.md and the README's summary of them (the
committed ones included), the MFU FLOP formulas, the CLIP image-text workload, and the GPU suite's
logic on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report, run, workloads

REPO = Path(__file__).resolve().parents[1]
ROW_FIELDS = {"contender", "label", "versions", "workload", "batch", "dtype", "median_s", "min_s", "max_s",
              "throughput", "xla_peak_bytes", "max_rss_bytes", "compile_s", "round_medians_s", "steps",
              "rounds", "loadavg_before", "loadavg_after", "agreement_rel_diff", "model_flops",
              "minor_faults_per_step"}


def _harness(*args, cwd=REPO):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no fake devices in the workers
    return subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "cpu", "--quick", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_quick_suite_records_every_field_and_regenerates_the_tables_and_the_readme(tmp_path):
    results, tables, readme = tmp_path / "r.jsonl", tmp_path / "RESULTS.md", tmp_path / "README.md"
    tables.write_text(f"# x\n\nkept\n\n{report.BEGIN}\nold table\n{report.END}\n\nkept too\n")
    readme.write_text(f"# x\n\n## Benchmarks\n\nkept\n\n{report.SUMMARY_BEGIN}\nold summary\n{report.SUMMARY_END}"
                      "\n\n## Tests\nkept too\n")
    proc = _harness("--workloads", "vit_b16_infer,vit_b16_train", "--results", str(results),
                    "--tables", str(tables), "--readme", str(readme))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted((r["workload"], r["label"]) for r in rows) == sorted(
        (w, c) for w in ("vit_b16_infer", "vit_b16_train")
        for c in ("hf_torch_eager", "jimm_linen", "jimm_nnx", "jimm_nnx+graph_mode"))
    for r in rows:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["throughput"] == pytest.approx(r["batch"] / r["median_s"])
        assert r["agreement_rel_diff"] <= workloads.AGREE_RTOL["float32"]
        assert r["max_rss_bytes"] > 0 and r["compile_s"] > 0
        if r["contender"].startswith("jimm"):
            assert r["xla_peak_bytes"] > 0 and r["versions"]["jax"]
        else:
            assert r["xla_peak_bytes"] is None and r["versions"]["torch"]
    text = tables.read_text()
    assert "old table" not in text and "kept\n" in text and "kept too\n" in text
    block = text.split(report.BEGIN)[1].split(report.END)[0]
    for c in ("hf_torch_eager", "jimm_linen", "jimm_nnx", "jimm_nnx+graph_mode"):
        assert block.count(f"| {c} |") == 2  # one row per workload
    assert "ViT-B/16 training step" in block
    text = readme.read_text()
    assert "old summary" not in text and "kept\n" in text and "## Tests\nkept too" in text
    summary = text.split(report.SUMMARY_BEGIN)[1].split(report.SUMMARY_END)[0]
    by = {r["label"]: r for r in rows if r["workload"] == "vit_b16_train"}
    ms = lambda label: f"{by[label]['median_s'] * 1e3:,.1f}"  # noqa: E731
    assert (f"| ViT-B/16 training step | {ms('jimm_linen')} | hf_torch_eager | {ms('hf_torch_eager')} | "
            f"{by['hf_torch_eager']['median_s'] / by['jimm_linen']['median_s']:.2f}x |") in summary
    assert summary.count("| hf_torch_eager |") == 2 and "quick run" in summary


def test_summary_compares_jimm_linen_with_the_fastest_other_library_at_default_settings(tmp_path):
    def row(workload, label, ms, **kw):
        return {"workload": workload, "run_id": "a", "task": "infer", "batch": 8, "dtype": "float32",
                "cpu_count": 2, "contender": label.split("+")[0], "label": label, "median_s": ms / 1e3, **kw}

    rows = [row("vit_b16_infer", "hf_torch_eager", 1600.0), row("vit_b16_infer", "hf_torch_compile", 1500.0),
            row("vit_b16_infer", "jimm_linen", 1200.0), row("vit_b16_infer", "jimm_nnx", 100.0),
            row("vit_b16_infer", "hf_torch_eager+hugetlb", 100.0), row("vit_b16_infer", "jimm_linen+loop", 100.0),
            row("long_sequence", "jimm_linen+default", 9000.0), row("long_sequence", "jimm_linen+xla_chunked", 8000.0),
            # an older run of the same workload, and a quick one: neither is the latest full run
            {**row("vit_b16_infer", "hf_torch_eager", 1.0), "run_id": "old"},
            {**row("vit_b16_infer", "jimm_linen", 1.0), "run_id": "quick", "quick": True}]
    rows.insert(0, rows.pop(8))
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table, note = report.summary(results).split("\n\n")
    assert table.splitlines()[2:] == ["| ViT-B/16 inference | 1,200.0 | hf_torch_compile | 1,500.0 | 1.25x |"]
    note = " ".join(note.split())
    assert "latest full run (batch 8, float32, 2 cores)" in note and "but jimm_linen and jimm_nnx" in note
    assert note.endswith("Not run against other libraries: Long sequence.")


def test_committed_tables_and_readme_summary_are_what_the_results_regenerate(tmp_path):
    """Regenerating from the committed results.jsonl is a no-op on the committed RESULTS.md and
    README, and the README points at RESULTS.md instead of carrying the full tables."""
    tables, readme = tmp_path / "RESULTS.md", tmp_path / "README.md"
    tables.write_text((REPO / "benchmarks" / "RESULTS.md").read_text())
    readme.write_text((REPO / "README.md").read_text())
    report.update_docs(REPO / "benchmarks" / "results" / "results.jsonl", tables, readme)
    assert tables.read_text() == (REPO / "benchmarks" / "RESULTS.md").read_text()
    assert readme.read_text() == (REPO / "README.md").read_text()
    text = readme.read_text()
    assert "](benchmarks/RESULTS.md)" in text and report.BEGIN not in text
    assert report.BEGIN in tables.read_text() and "| contender | median step (ms) |" in tables.read_text()


def test_a_wrong_output_stops_the_run_before_anything_is_recorded(tmp_path):
    results = tmp_path / "r.jsonl"
    proc = _harness("--workloads", "vit_b16_infer", "--contenders", "hf_torch_eager,jimm_nnx",
                    "--corrupt", "jimm_nnx", "--results", str(results), "--no-docs")
    assert proc.returncode != 0
    assert "disagree" in proc.stderr and "jimm_nnx/logits" in proc.stderr, proc.stderr[-2000:]
    assert not results.exists()


def test_check_agreement():
    ref = {"logits": np.ones((2, 3)), "loss": np.float32(2.0)}
    ok = {"logits": np.ones((2, 3)) + 5e-5, "loss": np.float32(2.0)}
    worst = run.check_agreement({"ref": ref, "ok": ok}, "ref", 1e-4)
    assert worst["ref"] == 0 and 4e-5 < worst["ok"] < 6e-5
    for bad in ({"logits": np.ones((2, 3)) * 1.001, "loss": np.float32(2.0)},
                {"logits": np.full((2, 3), np.nan), "loss": np.float32(2.0)},
                {"logits": np.ones((3, 2)), "loss": np.float32(2.0)},
                {"logits": np.ones((2, 3))}):
        with pytest.raises(run.DisagreementError, match="bad"):
            run.check_agreement({"ref": ref, "bad": bad}, "ref", 1e-4)


def test_vit_flop_formula_matches_xla_cost_analysis():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import jimm_linen

    cfg = dict(workloads.VIT_B16)
    # Looped layers: XLA's cost analysis counts a scanned (while-loop) body once.
    model = jimm_linen.ViT(jimm_linen.ViTConfig.from_hf_config(cfg), scan=False)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros(x.shape)))["params"])
    compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, x).compile()
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    ours = workloads.vit_flops(cfg, 2, train=False)
    # XLA also counts the elementwise work (softmax, GELU, norms): a few percent above the matmuls.
    assert ours <= xla["flops"] <= 1.08 * ours
    assert workloads.vit_flops(cfg, 2, train=True) == 3 * ours
    assert workloads.peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and workloads.peak_flops("cpu") is None


def test_quick_clip_workload_agrees_on_logits_per_image(tmp_path):
    results = tmp_path / "c.jsonl"
    proc = _harness("--workloads", "clip_b32_image_text", "--results", str(results), "--no-docs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "outputs agree with hf_torch_eager" in proc.stdout
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["contender"] for r in rows) == ["hf_torch_eager", "jimm_linen", "jimm_nnx"]
    for r in rows:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert r["model"] == "clip" and r["hf_config"] == workloads.TINY_CLIP and r["throughput_unit"] == "images/s"
        assert r["throughput"] > 0 and r["throughput"] == pytest.approx(r["batch"] / r["median_s"])
        assert r["agreement_rel_diff"] <= workloads.AGREE_RTOL["float32"]
        assert r["model_flops"] == workloads.clip_flops(workloads.TINY_CLIP, r["batch"])
        if r["contender"].startswith("jimm"):
            assert r["xla_peak_bytes"] > 0


def test_clip_flop_formula_matches_xla_cost_analysis():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import transformers

    import jimm_linen

    cfg = workloads.CLIP_B32
    hf = transformers.CLIPConfig(**cfg).to_dict()
    assert hf == transformers.CLIPConfig().to_dict()  # the real openai/clip-vit-base-patch32 sizes
    model = jimm_linen.CLIP(jimm_linen.CLIPConfig.from_hf_config(hf), scan=False)  # see the ViT test
    t, v = cfg["text_config"], cfg["vision_config"]
    x = jax.ShapeDtypeStruct((2, v["image_size"], v["image_size"], 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((2, t["max_position_embeddings"]), jnp.int32)
    params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros(x.shape),
                                                        jnp.zeros(ids.shape, jnp.int32)))["params"])
    fwd = jax.jit(lambda p, x, i: model.apply({"params": p}, x, i, jnp.ones(i.shape, jnp.int32)).logits_per_image)
    xla = fwd.lower(params, x, ids).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    ours = workloads.clip_flops(cfg, 2)
    assert ours <= xla["flops"] <= 1.08 * ours
    clip = next(w for w in workloads.cpu_suite() if w.name == "clip_b32_image_text")
    vit = next(w for w in workloads.cpu_suite() if w.name == "vit_b16_train")
    assert clip.flops() == workloads.clip_flops(cfg, clip.batch)
    assert vit.flops() == workloads.vit_flops(vit.hf_config, vit.batch, train=True)


def test_gpu_suite_covers_every_backend_and_runs_its_logic_on_cpu(tmp_path):
    suite = {w.name: w for w in workloads.gpu_suite()}
    assert {e.options.get("attention") for e in suite["gpu_attention_backends_bf16"].entries} == \
        {None, *workloads.TOKAMAX_GPU_BACKENDS}
    assert {w.dtype for w in suite.values()} == {"bfloat16"}
    assert all(e.options.get("device") == "cuda" for w in suite.values() for e in w.entries
               if e.contender.startswith("hf_torch"))
    on_cpu = run._on_cpu(suite["gpu_attention_backends_bf16"])
    assert [e.name for e in on_cpu.entries] == ["jimm_linen+default", "jimm_linen+xla_chunked", "jimm_linen+xla"]
    results = tmp_path / "g.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "gpu", "--quick", "--allow-cpu",
                           "--workloads", "gpu_attention_backends_bf16", "--results", str(results), "--no-docs"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["label"] for r in rows] == [e.name for e in on_cpu.entries]
    assert all(r["dtype"] == "bfloat16" and r["agreement_rel_diff"] <= workloads.AGREE_RTOL["bfloat16"] for r in rows)


def test_gpu_decoder_workloads_cover_every_backend_on_prefill_and_decode():
    decoders = [w for w in workloads.gpu_suite() if w.decoder]
    assert {w.model for w in decoders} == {"llama", "qwen3"}
    for family in ("llama", "qwen3"):
        mine = [w for w in decoders if w.model == family]
        assert {w.task for w in mine} == {"train", "prefill", "decode"}
        assert {w.batch for w in mine if w.task == "decode"} >= {1, 64}
        for task in ("prefill", "decode"):
            with_backends = [w for w in mine if w.task == task and any("attention" in e.options for e in w.entries)]
            assert len(with_backends) == 1, (family, task)
            w = with_backends[0]
            assert {e.options.get("attention") for e in w.entries if e.contender == "jimm_linen"} == \
                {None, *workloads.TOKAMAX_GPU_BACKENDS}
            ref = next(e for e in w.entries if e.name == w.reference)
            assert ref.contender == "jimm_linen" and "attention" not in ref.options  # checked against the default
        assert all({"jimm_linen", "hf_torch_eager", "hf_torch_compile"} <= {e.contender for e in w.entries}
                   for w in mine)
    # Every workload at one model's sizes: Llama-3.2-1B's published parameter count, 1,235,814,400.
    import copy

    import torch
    import transformers

    with torch.device("meta"):  # a copy: transformers fills the rope_scaling dict in place
        llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**copy.deepcopy(workloads.LLAMA32_1B)))
    assert sum(p.numel() for p in llama.parameters()) == 1_235_814_400
    assert {json.dumps(w.hf_config, sort_keys=True) for w in decoders} == {
        json.dumps(c, sort_keys=True) for c in (workloads.LLAMA32_1B, workloads.QWEN3_06B)}


def test_bf16_decode_check_is_forced_steps_through_the_cache(tmp_path):
    """float32: the generated tokens; bfloat16: the prompt, then each forced token alone,
    through one cache sized for them, and the last position's logits after each."""
    from benchmarks import llm

    ids = np.arange(6, dtype=np.int32).reshape(2, 3)
    forced = 10 + np.arange(2 * llm.CHECK_DECODE_STEPS, dtype=np.int32).reshape(2, -1)
    np.savez(tmp_path / "tokens.npz", ids=ids, forced=forced)
    seen, made = [], []

    def step(x, cache):
        seen.append(x)
        return np.full((2, 5), float(len(seen)), np.float32), cache + [x.shape[1]]

    def new_cache(batch, length):
        made.append((batch, length))
        return []

    tokens = np.ones((2, 4), np.int32)
    spec = dict(tokens=str(tmp_path / "tokens.npz"), dtype="float32")
    assert llm.decode_check(spec, tokens, step, new_cache) == {"tokens": tokens} and not seen
    out = llm.decode_check(dict(spec, dtype="bfloat16"), tokens, step, new_cache)
    assert list(out) == ["forced_logits"] and out["forced_logits"].shape == (2, 1 + llm.CHECK_DECODE_STEPS, 5)
    assert made == [(2, 3 + llm.CHECK_DECODE_STEPS)]
    np.testing.assert_array_equal(seen[0], ids)
    for i, x in enumerate(seen[1:]):
        np.testing.assert_array_equal(x, forced[:, i:i + 1])
    np.testing.assert_array_equal(out["forced_logits"][0, :, 0], np.arange(1, 2 + llm.CHECK_DECODE_STEPS))


def test_a_tiny_gpu_decode_workload_runs_its_logic_on_cpu(tmp_path):
    """`--suite gpu --quick --allow-cpu` on the batch-64 decode workload (batch 4 here): the
    GPU-only backends dropped, the rest run, HF on the CPU; the bf16 check compares the forced
    steps' logits (floats: HF's differ from jimm's by rounding, which tokens would not show)."""
    name = "gpu_llama32_1b_decode_b64_bf16"
    w = next(w for w in workloads.gpu_suite(quick=True) if w.name == name)
    on_cpu = run._on_cpu(w)
    assert all("device" not in e.options for e in on_cpu.entries)
    expected = [e.name for e in on_cpu.entries if e.contender in ("jimm_linen", "hf_torch_eager")]
    assert expected == ["jimm_linen", "jimm_linen+xla_chunked", "jimm_linen+xla", "hf_torch_eager"]
    results = tmp_path / "g.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "gpu", "--quick", "--allow-cpu",
                           "--workloads", name, "--contenders", "jimm_linen,hf_torch_eager", "--results",
                           str(results), "--no-docs"], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "outputs agree with jimm_linen" in proc.stdout
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert rows[0]["workload"] == "machine" and rows[0]["device_kind"] == "cpu"
    assert [r["label"] for r in rows[1:]] == expected
    for r in rows[1:]:
        assert r["dtype"] == "bfloat16" and r["batch"] == w.batch and r["new_tokens"] == w.new_tokens
        assert r["agreement_rel_diff"] <= workloads.AGREE_RTOL["bfloat16"]
        assert r["bandwidth_fraction"] > 0 and r["limits_run_id"] == rows[0]["run_id"]
    by = {r["label"]: r for r in rows[1:]}
    assert by["jimm_linen"]["agreement_rel_diff"] == 0 and by["hf_torch_eager"]["agreement_rel_diff"] > 0
    assert "| agreement (rel) |" in report.decoder_table(rows[1:])


def test_decoder_rows_on_a_gpu_carry_mfu_against_the_measured_and_the_datasheet_peak():
    w = next(w for w in workloads.gpu_suite() if w.name == "gpu_llama32_1b_train_bf16")
    limits = {"run_id": "m", "bandwidth_bytes_per_s": 3e12, "gemm_bfloat16_flops_per_s": 8e14}
    peak = workloads.peak_flops("NVIDIA H100 80GB HBM3")
    out = run.decoder_metrics(w, 0.5, limits, peak)
    assert out["mfu"] == pytest.approx(w.flops() / 0.5 / 8e14)
    assert out["datasheet_mfu"] == pytest.approx(w.flops() / 0.5 / peak)
    assert "datasheet_mfu" not in run.decoder_metrics(w, 0.5, limits)
    row = dict(out, label="jimm_linen", median_s=0.5, min_s=0.5, max_s=0.5, compile_s=1.0, task="train",
               dtype="bfloat16")
    assert "| MFU | MFU (datasheet) |" in report.decoder_table([row])


def test_a_decode_rows_bandwidth_share_is_per_steady_step():
    """A decode row's share of the bandwidth counts the decode loop's steady step: the whole
    call minus the one-token call (prefill, first step, fixed costs), per further token; where
    the one-token call is not the faster (noise), the share falls back to the whole call."""
    w = next(w for w in workloads.llm_suite() if w.name == "qwen3_decode_b1")
    limits = {"run_id": "m", "bandwidth_bytes_per_s": 30e9}
    step_bytes = workloads.decode_bytes_per_step(w.hf_config, 1, w.seq, w.new_tokens, 4)
    out = run.decoder_metrics(w, 16.0, limits, first_token_s=1.5)
    assert out["decode_step_s"] == pytest.approx(14.5 / (w.new_tokens - 1))
    assert out["bandwidth_fraction"] == pytest.approx(step_bytes / out["decode_step_s"] / 30e9)
    assert out["ms_per_token"] == pytest.approx(16e3 / w.new_tokens)  # the whole call's, as before
    slow_first = run.decoder_metrics(w, 16.0, limits, first_token_s=16.5)
    assert "decode_step_s" not in slow_first
    assert slow_first["bandwidth_fraction"] == pytest.approx(step_bytes * w.new_tokens / 16.0 / 30e9)
    rows = [dict(out, label="jimm_linen", median_s=16.0, min_s=15.0, max_s=17.0, compile_s=1.0, task="decode",
                 dtype="float32"),
            dict(slow_first, label="hf_torch_eager", median_s=16.0, min_s=16.0, max_s=16.0, compile_s=0.0,
                 task="decode", dtype="float32")]
    table = report.decoder_table(rows).splitlines()
    assert table[0].startswith("| contender | ms / step | of bandwidth | vs hf_torch_eager (step) | first token (s) |")
    assert table[2].startswith(f"| jimm_linen | {out['decode_step_s'] * 1e3:,.1f} | "
                               f"{out['bandwidth_fraction']:.1%} | - | 1.50 | 125.0 |")
    assert table[3].startswith("| hf_torch_eager | - |")


def test_the_committed_moe_table_is_the_latest_run():
    from benchmarks import moe

    tables = (REPO / "benchmarks" / "RESULTS.md").read_text()
    block = tables.split(moe.BEGIN, 1)[1].split(moe.END, 1)[0].strip()
    assert block == moe.render(moe.RESULTS)
    for name in (*moe.HF, "jimm_linen, tiled MoE", "jimm_linen, ragged MoE", "jimm_linen, dense MoE"):
        assert block.count(f"| {name} |") == 2, name  # prefill and decode


def test_quick_decoder_suite_checks_tokens_and_records_its_share_of_the_measured_limits(tmp_path):
    """`--suite llm --quick` on a tiny Llama: the host's limits measured once and recorded, greedy
    tokens identical across contenders, each row's bandwidth share / MFU from those limits, the
    Decoders tables and one README summary line per decoder workload."""
    results, tables, readme = tmp_path / "r.jsonl", tmp_path / "RESULTS.md", tmp_path / "README.md"
    tables.write_text(f"# x\n\n{report.BEGIN}\nold\n{report.END}\n")
    readme.write_text(f"# x\n\n{report.SUMMARY_BEGIN}\nold\n{report.SUMMARY_END}\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--suite", "llm", "--quick", "--workloads",
                           "llama_train_step,llama_decode_b1", "--contenders", "hf_torch_eager,jimm_linen",
                           "--results", str(results), "--tables", str(tables), "--readme", str(readme)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "outputs agree with hf_torch_eager" in proc.stdout
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    machine = [r for r in rows if r["workload"] == "machine"]
    assert len(machine) == 1 and machine[0]["bandwidth_bytes_per_s"] > 0
    assert machine[0]["gemm_float32_flops_per_s"] > 0 and machine[0]["gemm_bfloat16_flops_per_s"] > 0
    limits = machine[0]
    # --workloads order is the run order
    assert [r["workload"] for r in rows[1:]] == ["llama_train_step"] * 2 + ["llama_decode_b1"] * 2
    suite = {w.name: w for w in workloads.llm_suite(quick=True)}
    for r in rows[1:]:
        w = suite[r["workload"]]
        assert r["limits_run_id"] == limits["run_id"] == r["run_id"]
        # Tokens equal; a training step's loss and gradient norm within float32 rounding of HF's.
        assert r["agreement_rel_diff"] <= (0 if r["task"] == "decode" else workloads.AGREE_RTOL["float32"])
        # Timings carry no order: a tiny decode's first call can beat the median (host noise).
        assert r["compile_s"] >= 0 and r["first_call_s"] > 0 and r["max_rss_bytes"] > 0
        if r["task"] == "decode":
            steps_per_s = w.new_tokens / r["median_s"]
            assert r["throughput"] == pytest.approx(w.batch * steps_per_s)
            assert r["decode_bytes_per_step"] == workloads.decode_bytes_per_step(w.hf_config, w.batch, w.seq,
                                                                                w.new_tokens, 4)
            assert 0 < r["first_token_s"]
            # The steady step (call minus one-token call) where noise leaves one on a tiny model.
            if "decode_step_s" in r:
                steps_per_s = 1 / r["decode_step_s"]
                assert r["decode_step_s"] == pytest.approx((r["median_s"] - r["first_token_s"]) / (w.new_tokens - 1))
            assert r["bandwidth_fraction"] == pytest.approx(
                r["decode_bytes_per_step"] * steps_per_s / limits["bandwidth_bytes_per_s"])
        else:
            assert r["model_flops"] == workloads.decoder_flops(w.hf_config, w.batch, w.seq, train=True)
            assert r["mfu"] == pytest.approx(r["model_flops"] / r["median_s"] / limits["gemm_float32_flops_per_s"])
    block = tables.read_text().split(report.BEGIN)[1].split(report.END)[0]
    assert "### Decoders" in block and block.count("| jimm_linen |") == 2 and "triad" in block
    summary = readme.read_text().split(report.SUMMARY_BEGIN)[1].split(report.SUMMARY_END)[0]
    assert "| Llama 27k greedy decode of 8 tokens, batch 1 |" in summary
    assert "| Llama 27k training step, batch 4 |" in summary
    assert "machine" not in summary


def test_generated_tokens_must_be_equal_not_close():
    ref = {"tokens": np.array([[31990, 5, 7]], np.int32)}
    assert run.check_agreement({"ref": ref, "same": {"tokens": ref["tokens"].copy()}}, "ref", 1e-4)["same"] == 0
    off_by_one = {"tokens": np.array([[31991, 5, 7]], np.int32)}  # 3e-5 relative: within 1e-4 as a float
    with pytest.raises(run.DisagreementError, match=r"bad/tokens: 1 of 3 differ, first at \(0, 0\)"):
        run.check_agreement({"ref": ref, "bad": off_by_one}, "ref", 1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_decoder_parameter_count_is_hf_models_matmul_weights(family):
    """`decoder_matmul_params` (the FLOP and bytes formulas' P) against HF's model of the same
    config: every parameter but the input embedding and the norms (a tied head counted once)."""
    import torch
    import transformers

    cfg = dict(workloads.TINY_LLAMA if family == "llama" else workloads.TINY_QWEN3)
    model = transformers.AutoModelForCausalLM.from_config(transformers.CONFIG_MAPPING[family](**cfg))
    tied = cfg["tie_word_embeddings"]
    weights = {id(p): (n, p) for n, p in model.named_parameters()}  # named_parameters lists a tied tensor once
    counted = sum(p.numel() for n, p in weights.values() if "norm" not in n and ("embed_tokens" not in n or tied))
    assert isinstance(model.lm_head.weight, torch.nn.Parameter)
    assert workloads.decoder_matmul_params(cfg) == counted


def test_decoder_flop_formula_matches_xla_cost_analysis():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import transformers

    from jimm_linen.registry import decoders

    # The 336M Llama's widths at 2 layers; looped layers (XLA counts a scanned body once).
    cfg = dict(workloads.LLAMA_336M, num_hidden_layers=2)
    family = decoders()["llama"]
    module = family.module_cls(family.config_cls.from_hf_config(transformers.LlamaConfig(**cfg).to_dict()), scan=False)
    ids = jax.ShapeDtypeStruct((2, 256), jnp.int32)
    params = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), jnp.zeros(ids.shape, jnp.int32))))
    xla = jax.jit(lambda v, x: module.apply(v, x)).lower(params, ids).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    ours = workloads.decoder_flops(cfg, 2, 256, train=False)
    assert ours <= xla["flops"] <= 1.08 * ours
    assert workloads.decoder_flops(cfg, 2, 256, train=True) == 3 * ours


def test_keep_going_records_a_failed_contender_and_leaves_it_out(tmp_path):
    results = tmp_path / "r.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    args = [sys.executable, "-m", "benchmarks.run", "--suite", "llm", "--quick", "--workloads", "llama_prefill",
            "--contenders", "hf_torch_eager,jimm_linen", "--fail", "jimm_linen", "--results", str(results),
            "--no-docs"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert proc.returncode != 0 and "fails on purpose" in proc.stderr
    assert [json.loads(line)["workload"] for line in results.read_text().splitlines()] == ["machine"]
    proc = subprocess.run(args + ["--keep-going"], capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines() if '"llama_prefill"' in line]
    assert [r["label"] for r in rows] == ["hf_torch_eager"]
    assert list(rows[0]["failed"]) == ["jimm_linen"] and "fails on purpose" in rows[0]["failed"]["jimm_linen"]
    block = report.render(results)
    assert "Left out, their process failed: jimm_linen: `jimm_linen on llama_prefill failed (exit 1):`" in block
