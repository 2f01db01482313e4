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


def test_the_committed_moe_table_is_the_latest_run():
    from benchmarks import moe

    tables = (REPO / "benchmarks" / "RESULTS.md").read_text()
    block = tables.split(moe.BEGIN, 1)[1].split(moe.END, 1)[0].strip()
    assert block == moe.render(moe.RESULTS)
    for name in (*moe.HF, "jimm_linen, tiled MoE", "jimm_linen, ragged MoE", "jimm_linen, dense MoE"):
        assert block.count(f"| {name} |") == 2, name  # prefill and decode
