"""Generation: greedy tokens equal HF `generate` on a left-padded batch with early EOS (one and
several EOS ids), each sampling filter equals HF's logits processor on the same logits, sampling is
reproducible, one compiled program per generation and none per token or per call, the KV cache
gives the full forward's logits at every position (Llama, Qwen3, OLMo 2; scan and loop), bad input
is refused by name, and `jimm_nnx`'s `lm.generate` / `lm.stream` return the same."""

from __future__ import annotations

import contextlib
import dataclasses

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf_lp

import jimm_linen
from jimm_linen import generation as gen
from jimm_linen.layers.rope import Rope
from jimm_linen.layers.stack import scan_to_loop
from jimm_nnx.reference import perturb_
from tests.helpers import assert_close

PAD = 0
HF_CONFIG = dict(vocab_size=160, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=40, pad_token_id=PAD, bos_token_id=1,
                 eos_token_id=2, rms_norm_eps=1e-5)
# Three left-padded prompts (the first row full length).
PROMPT_IDS = np.array([[11, 25, 37, 42, 56, 61, 73], [0, 0, 84, 95, 101, 7, 19], [0, 0, 0, 0, 120, 131, 9]])
PROMPT_MASK = (np.arange(7)[None] >= np.array([0, 2, 4])[:, None]).astype(np.int64)
NEW = 10


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """HF's `LlamaForCausalLM` with every tensor random (norms perturbed), and ours loaded from
    its saved checkpoint."""
    import transformers

    d = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF_CONFIG)).eval()
    perturb_(hf, 1)
    hf.save_pretrained(d)
    module, variables = jimm_linen.from_pretrained(d)
    return hf, d, module, variables


def hf_generate(hf, eos, pad=PAD) -> np.ndarray:
    with torch.no_grad():
        out = hf.generate(torch.tensor(PROMPT_IDS), attention_mask=torch.tensor(PROMPT_MASK), max_new_tokens=NEW,
                          do_sample=False, pad_token_id=pad, eos_token_id=eos)
    return out.numpy()


def early_eos(new: np.ndarray, rows=(0, 1)) -> list[int]:
    """For each of `rows`, a token its greedy continuation (without EOS) produces within its first
    three new tokens and for the first time, and that no other row ever produces: as EOS, it
    stops that row early and only that row."""
    found = []
    for r in rows:
        others = np.delete(new, r, axis=0)
        for step in range(3):
            tok = int(new[r, step])
            if tok not in new[r, :step] and tok not in others and tok not in found:
                found.append(tok)
                break
        else:
            raise AssertionError(f"no early EOS candidate in row {r}: {new[r]}")
    return found


@pytest.fixture(scope="module")
def free_run(llama):
    """HF's greedy continuation with no EOS (a token id that never comes out of this model)."""
    hf = llama[0]
    unused = hf_generate(hf, eos=[HF_CONFIG["vocab_size"] - 1])
    new = unused[:, PROMPT_IDS.shape[1]:]
    assert (new != HF_CONFIG["vocab_size"] - 1).all()
    return new


class Compiles:
    """Counts the programs compiled while active, every backend compile in the process (a read
    from the persistent compilation cache, which the suite turns on, counts: the event times both)."""

    def __init__(self):
        self.names: list[str] = []

    def __call__(self, name, secs, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            self.names.append(name)

    @property
    def count(self):
        return len(self.names)


@contextlib.contextmanager
def counting():
    c = Compiles()
    jax.monitoring.register_event_duration_secs_listener(c)
    try:
        yield c
    finally:
        jax.monitoring.unregister_event_duration_listener(c)


# --- greedy vs HF -------------------------------------------------------------------------------

def test_greedy_equals_hf_generate_with_a_row_stopping_early(llama, free_run):
    hf, _, module, variables = llama
    (eos,) = early_eos(free_run, rows=(1,))
    ref = hf_generate(hf, eos=eos)
    assert ref.shape == (3, 7 + NEW)  # the other rows run to the end
    stop = list(ref[1, 7:]).index(eos)
    assert stop < 3 and (ref[1, 7 + stop + 1:] == PAD).all()
    out = jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, max_new_tokens=NEW, eos_token_id=eos,
                              pad_token_id=PAD)
    np.testing.assert_array_equal(np.asarray(out.sequences), ref)
    assert np.asarray(out.finished).tolist() == [False, True, False]
    assert np.asarray(out.num_new_tokens).tolist() == [NEW, stop + 1, NEW]


def test_several_eos_ids_and_every_row_stopping(llama, free_run):
    hf, _, module, variables = llama
    eos = early_eos(free_run, rows=(0, 1, 2))
    ref = hf_generate(hf, eos=eos)
    # HF returns fewer columns when every row has stopped; ours always has max_new_tokens, padded.
    assert ref.shape[1] < 7 + NEW
    out = jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, max_new_tokens=NEW, eos_token_id=eos,
                              pad_token_id=PAD)
    seq = np.asarray(out.sequences)
    np.testing.assert_array_equal(seq[:, :ref.shape[1]], ref)
    assert (seq[:, ref.shape[1]:] == PAD).all()
    assert np.asarray(out.finished).all()


def test_generation_config_supplies_the_defaults(llama, free_run, tmp_path):
    """No token ids given: EOS and pad come from generation_config.json (HF's precedence), and an
    explicit argument wins over it."""
    hf, d, module, variables = llama
    import json
    import shutil

    eos = early_eos(free_run, rows=(1,))
    shutil.copytree(d, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": eos, "pad_token_id": 5, "do_sample": False, "top_k": 3}))
    module2, _ = jimm_linen.from_pretrained(tmp_path / "ckpt")
    settings = gen.resolve_settings(module2.config)
    assert settings["eos_token_id"] == tuple(eos) and settings["pad_token_id"] == 5 and settings["top_k"] == 3
    assert gen.resolve_settings(module2.config, top_k=0, pad_token_id=7)["top_k"] == 0
    assert gen.resolve_settings(module2.config, pad_token_id=7)["pad_token_id"] == 7
    # Without generation_config.json: config.json's ids, HF's defaults for the rest.
    base = gen.resolve_settings(module.config)
    assert base["eos_token_id"] == (2,) and base["pad_token_id"] == PAD
    assert base["top_k"] == 50 and base["do_sample"] is False
    out = jimm_linen.generate(module2, variables, PROMPT_IDS, PROMPT_MASK, max_new_tokens=NEW)
    np.testing.assert_array_equal(out.sequences, hf_generate(hf, eos=eos, pad=5))
    assert (np.asarray(out.sequences)[1, -1] == 5)


# --- sampling -----------------------------------------------------------------------------------

def random_logits(seed, batch=4, vocab=300, ties=True):
    """float32 logits; with `ties`, on a grid of 0.25, so that many are exactly equal."""
    x = np.random.default_rng(seed).standard_normal((batch, vocab)).astype(np.float32) * 3
    return np.round(x * 4) / 4 if ties else x


def same_filtered(ours, ref):
    ours, ref = np.asarray(ours), ref.numpy()
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    finite = ~np.isneginf(ref)
    assert_close(ours[finite], ref[finite], what="kept logits")
    # ... hence the same distribution to sample from.
    assert_close(jax.nn.softmax(jnp.asarray(ours), -1), torch.softmax(torch.tensor(ref), -1).numpy(),
                 what="probabilities")


def same_up_to_ties(ours, ref):
    """The same logits kept, as a multiset per row: equal tokens may swap places."""
    same_filtered(np.sort(np.asarray(ours), -1), torch.sort(ref, dim=-1, stable=True).values)


@pytest.fixture
def stable_torch(monkeypatch):
    """torch's sort and topk with ties in index order (`stable=True`): HF's processors then
    break ties as ours do. (torch's default CPU sort orders equal values arbitrarily.)"""
    sort = torch.sort

    def stable_sort(x, dim=-1, descending=False, **kw):
        return sort(x, dim=dim, descending=descending, stable=True)

    def stable_topk(x, k, dim=-1, largest=True, sorted=True):
        values, indices = sort(x, dim=dim, descending=largest, stable=True)
        return torch.return_types.topk((values.narrow(dim, 0, k), indices.narrow(dim, 0, k)))

    monkeypatch.setattr(torch, "sort", stable_sort)
    monkeypatch.setattr(torch, "topk", stable_topk)


@pytest.mark.parametrize("seed", [0, 1])
def test_repetition_penalty_equals_hf(seed):
    logits = random_logits(seed)
    rng = np.random.default_rng(seed + 10)
    ids = rng.integers(0, logits.shape[1], (4, 30))
    pads = np.array([0, 3, 11, 29])
    mask = np.arange(30)[None] >= pads[:, None]
    for penalty in (1.3, 0.7):
        # HF skips the left padding (`prompt_ignore_length`, from the mask in `generate`).
        ref = hf_lp.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=torch.tensor(pads))(
            torch.tensor(ids), torch.tensor(logits))
        seen = gen.seen_tokens(jnp.asarray(ids), jnp.asarray(mask), logits.shape[1])
        same_filtered(gen.apply_repetition_penalty(jnp.asarray(logits), seen, penalty), ref)


TOP_K = (1, 2, 5, 40, 299, 300, 1000)
TOP_P = (0.0, 0.05, 0.3, 0.9, 0.999, 1.0)
MIN_P = (0.0, 0.05, 0.3, 0.9, 1.0)


def filters(x, keep):
    """(ours, HF's) for every filter setting, on logits `x`."""
    t, ids = torch.tensor(x), torch.zeros((x.shape[0], 1), dtype=torch.long)
    x = jnp.asarray(x)
    for temperature in (0.3, 1.7):
        yield gen.apply_temperature(x, temperature), hf_lp.TemperatureLogitsWarper(temperature)(ids, t)
    for k in TOP_K:
        yield gen.top_k_filter(x, k, keep), hf_lp.TopKLogitsWarper(k, min_tokens_to_keep=keep)(ids, t)
    for p in TOP_P:
        yield gen.top_p_filter(x, p, keep), hf_lp.TopPLogitsWarper(p, min_tokens_to_keep=keep)(ids, t)
    for p in MIN_P:
        yield gen.min_p_filter(x, p, keep), hf_lp.MinPLogitsWarper(p, min_tokens_to_keep=keep)(ids, t)


@pytest.mark.parametrize("keep", [1, 3])
def test_temperature_top_k_top_p_min_p_equal_hf(keep):
    for seed in (0, 1):
        for ours, ref in filters(random_logits(seed, ties=False), keep):
            same_filtered(ours, ref)


@pytest.mark.parametrize("keep", [1, 3])
def test_with_ties_the_same_logits_are_kept(keep):
    """Equal logits at a filter's edge: HF keeps some of them, which ones depending on how
    torch's sort happens to order them; we keep exactly as many, of the same values."""
    for seed in (0, 1):
        for ours, ref in filters(random_logits(seed), keep):
            same_up_to_ties(ours, ref)


@pytest.mark.parametrize("keep", [1, 3])
def test_ties_break_as_in_hf_with_a_stable_sort(stable_torch, keep):
    for seed in (0, 1):
        for ours, ref in filters(random_logits(seed), keep):
            same_filtered(ours, ref)


def test_the_chain_is_hfs_in_hfs_order():
    """All filters at once, settings as traced values, against HF's processors in the order
    `GenerationMixin._get_logits_processor` builds them; and greedy applies only the penalty."""
    logits = random_logits(3, ties=False)
    ids = np.random.default_rng(4).integers(0, 300, (4, 12))
    seen = gen.seen_tokens(jnp.asarray(ids), jnp.ones(ids.shape, bool), 300)
    chain = jax.jit(gen.process_logits)
    for sample, temperature, top_k, top_p, min_p, penalty in [(True, 0.7, 40, 0.8, 0.05, 1.2),
                                                             (True, 1.3, 0, 0.6, 0.0, 1.0),
                                                             (True, 0.5, 7, 1.0, 0.2, 0.9),
                                                             (False, 0.5, 7, 0.5, 0.2, 1.5)]:
        settings = dict(do_sample=sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                        repetition_penalty=penalty, eos_token_id=[1], pad_token_id=0)
        ours = chain(jnp.asarray(logits), seen, gen.sampling_arrays(settings))
        procs = [hf_lp.RepetitionPenaltyLogitsProcessor(penalty)] if penalty != 1.0 else []
        if sample:
            procs += [hf_lp.TemperatureLogitsWarper(temperature)]
            procs += [hf_lp.TopKLogitsWarper(top_k)] if top_k else []
            procs += [hf_lp.TopPLogitsWarper(top_p)] if top_p < 1 else []
            procs += [hf_lp.MinPLogitsWarper(min_p)]
        ref = hf_lp.LogitsProcessorList(procs)(torch.tensor(ids), torch.tensor(logits))
        same_filtered(ours, ref)


def test_sampling_draws_from_the_filtered_distribution():
    """The empirical frequencies of `next_token` over many keys match HF's filtered softmax."""
    logits = random_logits(5, batch=1, vocab=12, ties=False)
    settings = dict(do_sample=True, temperature=0.8, top_k=6, top_p=0.9, min_p=0.05, repetition_penalty=1.0,
                    eos_token_id=[1], pad_token_id=0)
    s = gen.sampling_arrays(settings)
    n = 20000
    keys = jax.random.split(jax.random.key(0), n)
    seen = jnp.zeros((1, 12), bool)
    draws = jax.jit(jax.vmap(lambda k: gen.next_token(jnp.asarray(logits), seen, s, k)))(keys)[:, 0]
    procs = hf_lp.LogitsProcessorList([hf_lp.TemperatureLogitsWarper(0.8), hf_lp.TopKLogitsWarper(6),
                                       hf_lp.TopPLogitsWarper(0.9), hf_lp.MinPLogitsWarper(0.05)])
    probs = torch.softmax(procs(torch.zeros((1, 1), dtype=torch.long), torch.tensor(logits)), -1)[0].numpy()
    freq = np.bincount(np.asarray(draws), minlength=12) / n
    assert (freq[probs == 0] == 0).all()
    sigma = np.sqrt(probs * (1 - probs) / n)
    assert (np.abs(freq - probs) <= 5 * sigma + 1e-9).all(), (freq, probs)


def test_sampling_is_reproducible_and_top_k_1_is_greedy(llama):
    _, _, module, variables = llama
    kw = dict(max_new_tokens=NEW, eos_token_id=[], pad_token_id=PAD)
    greedy = jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, **kw).sequences
    sample = dict(do_sample=True, temperature=1.5, top_k=0, top_p=0.95, **kw)
    a = jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, rng=jax.random.key(7), **sample).sequences
    b = jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, rng=jax.random.key(7), **sample).sequences
    c = jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, rng=jax.random.key(8), **sample).sequences
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).any() and (np.asarray(a) != np.asarray(greedy)).any()
    top1 = jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, rng=3,
                               **dict(sample, top_k=1, temperature=0.6))
    np.testing.assert_array_equal(top1.sequences, greedy)


# --- compiled once ------------------------------------------------------------------------------

def test_one_program_per_generation_and_none_per_call(llama):
    _, _, module, variables = llama
    key = jax.random.key(0)
    gen._generate.clear_cache()
    with counting() as c:
        first = jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, max_new_tokens=NEW, rng=key,
                                    eos_token_id=[5], pad_token_id=PAD)
    assert c.count == 1
    with counting() as c:
        # Other values of every setting and other prompt values of the same shapes: no compile.
        again = jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, max_new_tokens=NEW, rng=key,
                                    eos_token_id=[5], pad_token_id=PAD)
        jimm_linen.generate(module, variables, PROMPT_IDS[::-1] + 1, PROMPT_MASK[::-1], max_new_tokens=NEW,
                            do_sample=True, temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, repetition_penalty=1.3,
                            eos_token_id=[9], pad_token_id=3, rng=key)
    assert c.count == 0
    np.testing.assert_array_equal(first.sequences, again.sequences)


def test_stream_yields_the_same_tokens_compiling_two_programs(llama, free_run):
    _, _, module, variables = llama
    kw = dict(max_new_tokens=NEW, eos_token_id=early_eos(free_run, rows=(2,)), pad_token_id=PAD)
    ref = np.asarray(jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, **kw).sequences)
    gen._stream_start.clear_cache()
    gen._stream_step.clear_cache()
    with counting() as c:
        steps = list(gen.stream(module, variables, PROMPT_IDS, PROMPT_MASK, **kw))
    assert c.count == 2 and len(steps) == NEW
    np.testing.assert_array_equal(np.stack(steps, 1), ref[:, 7:])
    # Other settings (sampling, another EOS id): no compile, and the draws of `generate`.
    sampled = dict(kw, eos_token_id=[int(free_run[0, 1])], do_sample=True, temperature=0.5, rng=jax.random.key(1))
    with counting() as c:
        steps = list(gen.stream(module, variables, PROMPT_IDS, PROMPT_MASK, **sampled))
    assert c.count == 0
    ref = np.asarray(jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, **sampled).sequences)
    np.testing.assert_array_equal(np.stack(steps, 1), ref[:, 7:7 + len(steps)])
    assert (ref[:, 7 + len(steps):] == PAD).all()


# --- the KV cache -------------------------------------------------------------------------------

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=32, rms_norm_eps=1e-5)
FAMILIES = {
    "llama": lambda: jimm_linen.LlamaConfig(**SMALL, num_key_value_heads=2, attention_bias=True, rope=Rope(
        "llama3", 500000.0, (("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                             ("original_max_position_embeddings", 8)))),
    "qwen3": lambda: jimm_linen.Qwen3Config(**SMALL, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True),
    "olmo2": lambda: jimm_linen.Olmo2Config(**SMALL, num_key_value_heads=4),
    # Sliding layers in no period, the window shorter than the prompt: under scan each layer's
    # window is data, in a loop a Python int.
    "qwen3-sliding": lambda: jimm_linen.Qwen3Config(
        **dict(SMALL, num_hidden_layers=3), num_key_value_heads=2, head_dim=8, use_sliding_window=True,
        sliding_window=3, layer_types=("sliding_attention", "full_attention", "sliding_attention")),
}
MODULES = {"llama": jimm_linen.Llama, "qwen3": jimm_linen.Qwen3, "olmo2": jimm_linen.Olmo2,
           "qwen3-sliding": jimm_linen.Qwen3}


def random_variables(module, seed):
    """Every parameter random (norm scales around 1, everything else around 0)."""
    shapes = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))))
    leaves, tree = jax.tree.flatten_with_path(shapes)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        x = rng.standard_normal(leaf.shape).astype(np.float32) * 0.2
        out.append(jnp.asarray(x + 1 if "scale" in jax.tree_util.keystr(path) else x))
    return jax.tree.unflatten(tree, out)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("scan", [True, False])
def test_prefill_then_step_by_step_decode_equals_the_full_forward(family, scan):
    """A left-padded batch: the first `P` columns prefilled into the cache, the rest fed one token
    at a time; the logits at every real position equal one forward over the whole sequence."""
    config = FAMILIES[family]()
    module = MODULES[family](config)
    variables = random_variables(module, seed=len(family))
    if not scan:
        module = MODULES[family](config, scan=False)
        variables = {"params": scan_to_loop(variables["params"], config.num_hidden_layers)}
    b, t, p = 3, 9, 4
    ids = jnp.asarray(np.random.default_rng(1).integers(0, config.vocab_size, (b, t)), jnp.int32)
    mask = jnp.asarray(np.arange(t)[None] >= np.array([0, 1, 3])[:, None])

    @jax.jit
    def run(variables, ids, mask):
        full = module.apply(variables, ids, mask)
        logits, cache = module.apply(variables, ids[:, :p], mask[:, :p], cache=module.init_cache(b, t + 2))

        def step(cache, i):
            out, cache = module.apply(variables, jax.lax.dynamic_slice_in_dim(ids, i, 1, 1),
                                      jax.lax.dynamic_slice_in_dim(mask, i, 1, 1), cache=cache)
            return cache, out[:, 0]

        _, steps = jax.lax.scan(step, cache, jnp.arange(p, t))
        return full, jnp.concatenate([logits, steps.transpose(1, 0, 2)], axis=1)

    full, cached = run(variables, ids, mask)
    m = np.asarray(mask)
    assert_close(np.asarray(cached)[m], np.asarray(full)[m], what=f"{family} cached logits")


def test_a_prompt_longer_than_the_cache_is_refused(llama):
    _, _, module, variables = llama
    with pytest.raises(ValueError, match="do not fit a KV cache of length 4"):
        module.apply(variables, jnp.asarray(PROMPT_IDS), cache=module.init_cache(3, 4))


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("change,says", [
    (dict(input_ids=PROMPT_IDS + 150), r"token ids must lie in \[0, 160\)"),
    (dict(input_ids=-PROMPT_IDS), r"token ids must lie in \[0, 160\)"),
    (dict(input_ids=PROMPT_IDS.astype(np.float32)), "must be integer token ids"),
    (dict(input_ids=PROMPT_IDS[0]), r"must be \[batch, length\]"),
    (dict(attention_mask=PROMPT_MASK[:, 1:]), r"attention_mask has shape \(3, 6\), input_ids \(3, 7\)"),
    (dict(attention_mask=PROMPT_MASK[:, ::-1]), "row 1 is right-padded"),
    (dict(attention_mask=PROMPT_MASK * np.array([1, 1, 1, 0, 1, 1, 1])), "row 0 is padded between tokens"),
    (dict(attention_mask=PROMPT_MASK * np.array([[1], [1], [0]])), "row 2 has no tokens"),
    (dict(attention_mask=PROMPT_MASK * 2), "attention_mask must hold 0 / 1"),
    (dict(max_new_tokens=34), r"the longest prompt \(7 tokens\) \+ max_new_tokens \(34\) = 41 positions exceed "
                              r"max_position_embeddings \(40\)"),
    (dict(max_new_tokens=0), "max_new_tokens must be an int >= 1"),
    (dict(do_sample=True, temperature=0.0), "temperature must be > 0 when sampling"),
    (dict(do_sample=True, temperature=-1.0), "temperature must be > 0 when sampling"),
    (dict(top_k=-1), "top_k must be an int >= 0"),
    (dict(top_k=2.5), "top_k must be an int >= 0"),
    (dict(top_p=1.5), r"top_p must be a float in \[0.0, 1.0\]"),
    (dict(min_p=-0.1), r"min_p must be a float in \[0.0, 1.0\]"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (dict(eos_token_id=[2, 160]), r"eos_token_id \[160\] outside the vocabulary"),
    (dict(eos_token_id="2"), "eos_token_id must be an int or a list of ints"),
    (dict(pad_token_id=1.0), "pad_token_id must be an int"),
])
def test_bad_input_is_refused_by_name(llama, change, says):
    _, _, module, variables = llama
    kw = {**dict(input_ids=PROMPT_IDS, attention_mask=PROMPT_MASK, max_new_tokens=NEW), **change}
    with pytest.raises(ValueError, match=says):
        jimm_linen.generate(module, variables, **kw)
    with pytest.raises(ValueError, match=says):
        next(gen.stream(module, variables, **kw))


def test_greedy_accepts_temperature_zero_and_dynamic_rope_may_extrapolate(llama):
    _, _, module, variables = llama
    gen.check_prompt(module.config, PROMPT_IDS, PROMPT_MASK, 33)
    dynamic = dataclasses.replace(module.config, rope=Rope("dynamic", 10000.0, (("factor", 2.0),)))
    gen.check_prompt(dynamic, PROMPT_IDS, PROMPT_MASK, 100)
    greedy = jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, max_new_tokens=NEW)
    cold = jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, max_new_tokens=NEW, temperature=0.0)
    np.testing.assert_array_equal(cold.sequences, greedy.sequences)
    with pytest.raises(TypeError, match="needs a decoder LM"):
        jimm_linen.generate(jimm_linen.ViT(jimm_linen.ViTConfig()), {}, PROMPT_IDS, max_new_tokens=2)


# --- NNX ----------------------------------------------------------------------------------------

def test_nnx_generate_and_stream_equal_the_linen_function(llama, free_run):
    import jimm_nnx

    hf, d, module, variables = llama
    lm = jimm_nnx.CausalLM.from_pretrained(d)
    kw = dict(max_new_tokens=NEW, eos_token_id=early_eos(free_run, rows=(0,)), pad_token_id=PAD)
    ours = jimm_linen.generate(module, variables, PROMPT_IDS, PROMPT_MASK, **kw)
    nnx_out = lm.generate(PROMPT_IDS, PROMPT_MASK, **kw)
    assert type(nnx_out) is jimm_linen.GenerationOutput
    for a, b in zip(jax.tree.leaves(nnx_out), jax.tree.leaves(ours)):
        np.testing.assert_array_equal(a, b)
    steps = np.stack(list(lm.stream(PROMPT_IDS, PROMPT_MASK, **kw)), 1)
    np.testing.assert_array_equal(steps, np.asarray(ours.sequences)[:, 7:])


def _primitives(jaxpr) -> set[str]:
    """Every primitive in `jaxpr` and the jaxprs nested in its equations."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


def _while_bodies(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "while":
            yield eqn.params["body_jaxpr"].jaxpr
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _while_bodies(sub)


@pytest.mark.parametrize("entry", ["generate", "stream"])
def test_a_scanned_model_decodes_with_its_layers_unstacked(llama, entry):
    """The decode step of a scanned model runs no layer scan: under `nn.scan` XLA copies every
    layer's weights out of the stacked arrays at each token (3x slower decode on CPU at 336M
    parameters). The prefill keeps its scan."""
    _, _, module, variables = llama
    assert module.scan
    module, ids, mask, s, key, rules = gen._prepare(module, PROMPT_IDS, PROMPT_MASK, NEW, None, {})
    if entry == "generate":
        jaxpr = jax.make_jaxpr(lambda v: gen._generate(module, v, ids, mask, s, key, max_new_tokens=NEW,
                                                       rules=rules))(variables).jaxpr
        (decode,) = list(_while_bodies(jaxpr))  # the prefill's layers are a scan, not a while
        assert "scan" in _primitives(jaxpr) and "scan" not in _primitives(decode)
        # The loop carries each layer's keys and values in buffers of their own (written in place),
        # not one stacked cache sliced and re-stacked at every step.
        cfg, (b, t) = module.config, PROMPT_IDS.shape
        layer_cache = (b, t + NEW, cfg.num_key_value_heads, cfg.head_dim)
        carried = [v.aval.shape for v in decode.invars]
        assert carried.count(layer_cache) == 2 * cfg.num_hidden_layers
        assert (cfg.num_hidden_layers, *layer_cache) not in carried
    else:
        state, unstacked = gen._stream_start(module, variables, ids, mask, s, key, max_new_tokens=NEW, rules=rules)
        step = jax.make_jaxpr(lambda v, st: gen._stream_step(module.decoding(), v, st, s, rules=rules))(
            unstacked, state[0]).jaxpr
        assert "scan" not in _primitives(step)
        assert "layers" not in unstacked["params"]["decoder"] and "layers_1" in unstacked["params"]["decoder"]


def test_logits_to_keep_gives_the_last_positions_logits(llama):
    """The prefill asks for the last position's logits only (HF's `logits_to_keep`), never
    `[B, T, V]`; they equal the full forward's, with and without a cache."""
    _, _, module, variables = llama
    full = module.apply(variables, PROMPT_IDS, PROMPT_MASK)
    np.testing.assert_array_equal(module.apply(variables, PROMPT_IDS, PROMPT_MASK, logits_to_keep=3), full[:, -3:])
    last, _ = module.apply(variables, PROMPT_IDS, PROMPT_MASK, cache=module.init_cache(3, 9), logits_to_keep=1)
    assert last.shape == (3, 1, HF_CONFIG["vocab_size"])
    assert_close(last, full[:, -1:], what="prefill's last logits")
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match=rf"logits_to_keep must be an int >= 0 \(0: every position\), got {bad}"):
            module.apply(variables, PROMPT_IDS, PROMPT_MASK, logits_to_keep=bad)
