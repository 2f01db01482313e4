"""jimm_linen ViT vs the legacy HF Flax ViT (transformers==4.57.6), on checkpoints written by
transformers 5.23's PyTorch `ViTForImageClassification.save_pretrained`.

The legacy transformers is pip-installed beside the main env on first use (cached under
`.cache/`, guarded by a file lock) and run in a subprocess: see `tests/legacy_flax.py`. A
failed install fails these tests; it never skips them. Run only these with `-m legacy_flax`,
leave them out with `-m "not legacy_flax"`.

Tolerance (float32, CPU): max |jimm - legacy| <= 1e-5 * max(1, max |legacy|), on the logits and on
every hidden state (the embeddings and each block's output).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

import jimm_linen
from tests import legacy_flax
from tests.helpers import bound

pytestmark = pytest.mark.legacy_flax

BATCH = 2
# Two small configs that differ in everything the legacy model reads from the config.
CONFIGS = {
    "gelu-eps1e-12-qkv_bias": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        image_size=16, patch_size=4, num_channels=3, num_labels=3,
        hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True),
    "gelu_new-eps1e-6-no_qkv_bias": dict(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=6, intermediate_size=64,
        image_size=24, patch_size=8, num_channels=3, num_labels=7,
        hidden_act="gelu_new", layer_norm_eps=1e-6, qkv_bias=False),
}
OTHER_ACT = {"gelu": "gelu_new", "gelu_new": "gelu"}


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def save_hf_checkpoint(directory: Path, cfg: dict, seed: int) -> None:
    """A PyTorch ViT with weights far from HF's 0.02-std init, so that activations leave the
    region where exact and tanh GELU (or the LayerNorm eps) agree to 1e-5 anyway."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(directory)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy_flax")
    out = {}
    for seed, (name, cfg) in enumerate(CONFIGS.items()):
        ckpt = root / name / "checkpoint"
        save_hf_checkpoint(ckpt, cfg, seed)
        pixels = np.random.default_rng(seed).normal(
            size=(BATCH, cfg["num_channels"], cfg["image_size"], cfg["image_size"])).astype(np.float32)
        np.save(root / name / "pixels_nchw.npy", pixels)
        out[name] = dict(checkpoint=ckpt, pixels=root / name / "pixels_nchw.npy", out=root / name / "legacy")
    return root, out


@pytest.fixture(scope="module")
def legacy(cases):
    """A function returning the legacy outputs per config; the install and the subprocess run on
    the first call, inside a test, so that their failure is a test failure."""
    root, jobs = cases
    return legacy_flax.lazy_outputs(jobs, root)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_vit_matches_legacy_flax(name, cases, legacy):
    _, jobs = cases
    cfg = CONFIGS[name]
    ref = legacy(name)
    meta = ref["meta"]
    assert meta["transformers_version"] == legacy_flax.TRANSFORMERS_VERSION
    assert meta["model_class"] == "FlaxViTForImageClassification"
    assert (meta["hidden_act"], meta["layer_norm_eps"], meta["qkv_bias"]) == \
        (cfg["hidden_act"], cfg["layer_norm_eps"], cfg["qkv_bias"])
    assert meta["num_hidden_states"] == cfg["num_hidden_layers"] + 1

    images = np.load(jobs[name]["pixels"]).transpose(0, 2, 3, 1)  # jimm takes NHWC
    model, variables = jimm_linen.from_pretrained(jobs[name]["checkpoint"])
    with jax.default_matmul_precision("highest"):
        out = model.apply(variables, images, return_hidden_states=True)

    diffs = {"logits": max_diff(out.output, ref["logits"])}
    assert out.output.shape == ref["logits"].shape == (BATCH, cfg["num_labels"])
    assert len(out.hidden_states) == len(ref["hidden_states"])
    for i, (ours, theirs) in enumerate(zip(out.hidden_states, ref["hidden_states"])):
        assert ours.shape == theirs.shape, (i, ours.shape, theirs.shape)
        diffs[f"hidden_state_{i}"] = max_diff(ours, theirs)
    scale = {"logits": ref["logits"], **{f"hidden_state_{i}": h for i, h in enumerate(ref["hidden_states"])}}
    print(f"\n{name}: max |jimm - legacy flax| (/ tolerance): "
          + ", ".join(f"{k}={v:.2e} ({v / bound(scale[k]):.2f})" for k, v in diffs.items()))
    assert diffs["logits"] <= bound(ref["logits"]), diffs
    for i, theirs in enumerate(ref["hidden_states"]):
        assert diffs[f"hidden_state_{i}"] <= bound(theirs), (i, diffs)

    # The comparison can fail: the other GELU puts the logits well outside the tolerance.
    wrong_model, wrong_vars = jimm_linen.from_pretrained(jobs[name]["checkpoint"],
                                                         hidden_act=OTHER_ACT[cfg["hidden_act"]])
    with jax.default_matmul_precision("highest"):
        wrong = wrong_model.apply(wrong_vars, images)
    assert max_diff(wrong, ref["logits"]) > 10 * bound(ref["logits"])


def test_install_is_cached(legacy):
    """After the first use the side install is complete and stamped; using it again is a no-op."""
    legacy(next(iter(CONFIGS)))  # make sure it ran (and fail here too if it could not)
    target = legacy_flax.install_dir()
    stamp = target / legacy_flax.STAMP
    assert stamp.exists()
    before = stamp.stat().st_mtime_ns
    assert legacy_flax.ensure_installed() == target
    assert stamp.stat().st_mtime_ns == before
    assert (target / "transformers" / "models" / "vit" / "modeling_flax_vit.py").exists()
