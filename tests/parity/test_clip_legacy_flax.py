"""jimm_linen CLIP vs the legacy HF Flax `FlaxCLIPModel` (transformers==4.57.6), on checkpoints
written by transformers 5.23's PyTorch `CLIPModel.save_pretrained`.

The legacy transformers is pip-installed beside the main env on first use and run in a
subprocess (`tests/legacy_flax.py`); a failed install fails these tests, it never skips them.

Compared (float32, CPU; max |jimm - legacy| <= 1e-5 * max(1, max |legacy|) each): logits per
image and per text, the normalised image and text embeddings, each tower's pooled features
(HF's `pooler_output`), the text tower's last hidden state, and every hidden state of both
towers (the embeddings, after the vision pre-LayerNorm, and each block's output). The vision
`last_hidden_state` is not compared: HF's is before the post-LayerNorm (it is its last hidden
state, which is compared), jimm's after it.

Text pooling. FlaxCLIPModel 4.57.6 pools like PyTorch CLIP in transformers 5.23 and like
jimm: at the largest token id when `eos_token_id == 2` (configs from before transformers PR
#24773, where the EOS was the largest id of OpenAI's vocabulary), else at the *first*
`eos_token_id` (position 0 if a row has none). The inputs are chosen so that the two rules
pick different positions in every config, and the test checks that the reference pooled where
its rule says and not where the other rule would: a jimm that pooled by the wrong rule fails.

Padding. CLIP's text attention is causal, so with right padding the mask only changes the
hidden states *at* padded positions; those are compared too (every hidden state, whole), and the
test checks that jimm without the mask gets them wrong there.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np
import pytest

import jimm_linen
from jimm_nnx.reference import CLIP_CONFIGS as CLIP
from jimm_nnx.reference import VISION_48, perturb_
from tests import legacy_flax
from tests.helpers import bound

pytestmark = pytest.mark.legacy_flax

# Each case: the HF config kwargs, the image batch, and the texts: `length` tokens per row
# (BOS first, then random ids other than BOS/EOS/padding), each row given as
# (position of the EOS or None, what fills the positions after it: "pad" / "eos" (both masked
# out) or None (random ids, attended)). `mask`: whether an attention_mask is passed at all.
CASES = {
    # projection_dim unlike either width; EOS id 5 is far from the largest id; text shorter than
    # max_position_embeddings; padding with the pad id and with the EOS id itself (first EOS wins).
    "quick_gelu-eos5-padded": dict(
        config=dict(
            projection_dim=24,
            text_config=dict(**CLIP["clip-quick_gelu-eos5"]["text_config"], hidden_act="quick_gelu", layer_norm_eps=1e-5),
            vision_config=dict(**VISION_48, hidden_act="quick_gelu", layer_norm_eps=1e-5)),
        images=2, length=9, rows=[(8, None), (5, "pad"), (3, "eos")], mask=True),
    # The old `eos_token_id == 2` configs: pooled at the largest id (not at the EOS); text as long
    # as max_position_embeddings; a different activation and eps per tower; more images than texts.
    "gelu-eos2-largest_id-32px": dict(
        config=dict(
            projection_dim=40, text_config=CLIP["clip-gelu-eos2-32px"]["text_config"],
            vision_config={**CLIP["clip-gelu-eos2-32px"]["vision_config"], "layer_norm_eps": 1e-12}),
        images=3, length=9, rows=[(6, "pad"), (8, None)], mask=True),
    # No attention_mask at all; a second EOS later in a row (the first one pools) and a row with
    # no EOS (position 0); gelu_new text, one image.
    "gelu_new-eos7-nomask": dict(
        config=dict(
            projection_dim=16,
            text_config=dict(vocab_size=40, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=16, hidden_act="gelu_new",
                             layer_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=7),
            vision_config=dict(hidden_size=24, intermediate_size=32, num_hidden_layers=1, num_attention_heads=3,
                               image_size=8, patch_size=4, hidden_act="quick_gelu", layer_norm_eps=1e-6)),
        images=1, length=6, rows=[(2, None), (None, None)], mask=False, second_eos=(0, 4)),
}
OTHER_ACT = {"quick_gelu": "gelu", "gelu": "gelu_new", "gelu_new": "gelu"}


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def make_text(case: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    t = case["config"]["text_config"]
    bos, eos, pad = t["bos_token_id"], t["eos_token_id"], t["pad_token_id"]
    rng = np.random.default_rng(seed)
    allowed = np.setdiff1d(np.arange(t["vocab_size"]), [bos, eos, pad])
    ids = rng.choice(allowed, size=(len(case["rows"]), case["length"]))
    ids[:, 0] = bos
    mask = np.ones_like(ids)
    for row, (eos_at, fill) in enumerate(case["rows"]):
        if eos_at is not None:
            ids[row, eos_at] = eos
        if fill is not None:
            ids[row, eos_at + 1:] = {"pad": pad, "eos": eos}[fill]
            mask[row, eos_at + 1:] = 0
    if "second_eos" in case:
        ids[case["second_eos"]] = eos
    return ids.astype(np.int64), mask.astype(np.int64)


def pool_index(input_ids: np.ndarray, eos_token_id: int, largest_id: bool) -> np.ndarray:
    """HF CLIP's text pooling position: the largest id (`eos_token_id == 2`) or the first EOS."""
    return input_ids.argmax(-1) if largest_id else (input_ids == eos_token_id).argmax(-1)


def save_hf_checkpoint(directory: Path, config: dict, seed: int) -> None:
    import torch
    import transformers
    from transformers.utils import logging

    logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = transformers.CLIPModel(transformers.CLIPConfig(**config)).eval()
    perturb_(model, seed + 1)  # norms, biases and the logit scale away from their init
    model.save_pretrained(directory)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy_flax_clip")
    jobs = {}
    for seed, (name, case) in enumerate(CASES.items()):
        d = root / name
        save_hf_checkpoint(d / "checkpoint", case["config"], seed)
        v = case["config"]["vision_config"]
        pixels = np.random.default_rng(100 + seed).normal(
            size=(case["images"], 3, v["image_size"], v["image_size"])).astype(np.float32)
        input_ids, mask = make_text(case, seed)
        inputs = {"pixel_values": d / "pixel_values_nchw.npy", "input_ids": d / "input_ids.npy"}
        np.save(inputs["pixel_values"], pixels)
        np.save(inputs["input_ids"], input_ids)
        if case["mask"]:
            inputs["attention_mask"] = d / "attention_mask.npy"
            np.save(inputs["attention_mask"], mask)
        jobs[name] = dict(checkpoint=d / "checkpoint", out=d / "legacy", model_class="FlaxCLIPModel", inputs=inputs)
    return root, jobs


@pytest.fixture(scope="module")
def legacy(cases):
    """The legacy outputs per case; the install and the subprocess run on the first call, inside
    a test, so that their failure is a test failure."""
    root, jobs = cases
    return legacy_flax.lazy_outputs(jobs, root)


def _apply(model, variables, images, input_ids, mask):
    """`model.apply(..., return_hidden_states=True)`, jitted (op by op costs seconds of compiles)."""
    with jax.default_matmul_precision("highest"):
        return jax.jit(functools.partial(model.apply, return_hidden_states=True))(variables, images, input_ids, mask)


@pytest.mark.parametrize("name", list(CASES))
def test_clip_matches_legacy_flax(name, cases, legacy):
    _, jobs = cases
    case, job = CASES[name], jobs[name]
    t_cfg, v_cfg = case["config"]["text_config"], case["config"]["vision_config"]
    ref = legacy(name)
    meta = ref["meta"]
    assert meta["transformers_version"] == legacy_flax.TRANSFORMERS_VERSION
    assert meta["model_class"] == "FlaxCLIPModel"
    # The legacy model read the 5.23 config.json as meant.
    assert meta["config"]["projection_dim"] == case["config"]["projection_dim"]
    for tower, cfg in (("text_config", t_cfg), ("vision_config", v_cfg)):
        assert {k: meta["config"][tower][k] for k in cfg} == cfg, tower
    n_img, n_txt = case["images"], len(case["rows"])

    images = np.load(job["inputs"]["pixel_values"]).transpose(0, 2, 3, 1)  # jimm takes NHWC
    input_ids = np.load(job["inputs"]["input_ids"])
    mask = np.load(job["inputs"]["attention_mask"]) if case["mask"] else None
    assert meta["inputs"]["input_ids"]["shape"] == list(input_ids.shape)
    assert ("attention_mask" in meta["inputs"]) == case["mask"]

    # The reference pooled where HF's rule says, and the other rule would have pooled elsewhere.
    txt_ref, img_ref = ref["text_model_output"], ref["vision_model_output"]
    largest = t_cfg["eos_token_id"] == 2
    rule = pool_index(input_ids, t_cfg["eos_token_id"], largest)
    other = pool_index(input_ids, t_cfg["eos_token_id"], not largest)
    rows = np.arange(n_txt)
    assert (rule != other).any(), "the inputs must tell the pooling rules apart"
    np.testing.assert_array_equal(txt_ref["pooler_output"], txt_ref["last_hidden_state"][rows, rule])
    assert max_diff(txt_ref["pooler_output"], txt_ref["last_hidden_state"][rows, other]) \
        > 10 * bound(txt_ref["pooler_output"])

    model, variables = jimm_linen.from_pretrained(job["checkpoint"])
    assert type(model).__name__ == "CLIP"
    out = _apply(model, variables, images, input_ids, mask)
    assert out.logits_per_image.shape == ref["logits_per_image"].shape == (n_img, n_txt)

    pairs = {
        "logits_per_image": (out.logits_per_image, ref["logits_per_image"]),
        "logits_per_text": (out.logits_per_text, ref["logits_per_text"]),
        "image_embeds": (out.image_embeds, ref["image_embeds"]),
        "text_embeds": (out.text_embeds, ref["text_embeds"]),
        "vision.pooled": (out.vision_output.pooled, img_ref["pooler_output"]),
        "text.pooled": (out.text_output.pooled, txt_ref["pooler_output"]),
        "text.last_hidden_state": (out.text_output.last_hidden_state, txt_ref["last_hidden_state"]),
    }
    for tower, ours, theirs in (("vision", out.vision_output, img_ref), ("text", out.text_output, txt_ref)):
        n_layers = (v_cfg if tower == "vision" else t_cfg)["num_hidden_layers"]
        assert len(ours.hidden_states) == len(theirs["hidden_states"]) == n_layers + 1, tower
        for i, (a, b) in enumerate(zip(ours.hidden_states, theirs["hidden_states"])):
            pairs[f"{tower}.hidden_state_{i}"] = (a, b)
    diffs = {}
    for key, (ours, theirs) in pairs.items():
        assert np.shape(ours) == np.shape(theirs), (key, np.shape(ours), np.shape(theirs))
        diffs[key] = max_diff(ours, theirs)
    print(f"\n{name}: max |jimm - legacy flax| (/ tolerance): "
          + ", ".join(f"{k}={v:.2e} ({v / bound(pairs[k][1]):.2f})" for k, v in diffs.items()))
    bad = {k: v for k, v in diffs.items() if not v <= bound(pairs[k][1])}
    assert not bad, f"out of tolerance: {bad}"

    # The comparison can fail. Other activations in both towers: the hidden states leave the
    # tolerance (the inputs and the weights are far enough from where the GELUs agree).
    cfg = model.config
    wrong_cfg = dataclasses.replace(
        cfg, text=dataclasses.replace(cfg.text, hidden_act=OTHER_ACT[t_cfg["hidden_act"]]),
        vision=dataclasses.replace(cfg.vision, hidden_act=OTHER_ACT[v_cfg["hidden_act"]]))
    wrong = _apply(model.clone(config=wrong_cfg), variables, images, input_ids, mask)
    for tower, ours, theirs in (("vision", wrong.vision_output, img_ref), ("text", wrong.text_output, txt_ref)):
        d, b = max_diff(ours.hidden_states[-1], theirs["hidden_states"][-1]), bound(theirs["hidden_states"][-1])
        print(f"  other activation, {tower} last hidden state: {d:.2e} ({d / b:.1f} x tolerance)")
        assert d > 2 * b, tower
    if mask is not None and (mask == 0).any():
        # Without the mask, the padded positions' states are wrong (the rest is causal, unchanged).
        unmasked = _apply(model, variables, images, input_ids, None)
        h, h_ref = unmasked.text_output.hidden_states[-1], txt_ref["hidden_states"][-1]
        padded = mask == 0
        d = max_diff(np.asarray(h)[padded], h_ref[padded])
        print(f"  no attention_mask, text last hidden state at padded positions: {d:.2e} "
              f"({d / bound(h_ref):.1f} x tolerance)")
        assert d > 10 * bound(h_ref)
        assert max_diff(np.asarray(h)[~padded], h_ref[~padded]) <= bound(h_ref)
