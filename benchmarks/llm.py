"""Decoder contenders for `benchmarks.worker` (workloads with a decoder `model`: `--suite llm`, the
decoders of `--suite gpu`).

Tasks, on the token ids in `spec["tokens"]` (an .npz with `ids [B, seq]` and, for the bf16 decode
check, `forced [B, CHECK_DECODE_STEPS]`, int32):

* `decode`: greedy generation of exactly `new_tokens` tokens after the `ids` prompt (no EOS, no
  padding); one step = one whole generate call (its prefill included), and the same call for one
  new token is timed as well (`Bench.first_token`), so that a row can show the decode loop's
  steady step apart from the prefill and a call's fixed costs; checked (`decode_check`):
  in float32 the new tokens, which must be identical across contenders; in bfloat16 the logits of
  `forced` tokens decoded one at a time through the KV cache after the prompt.
* `prefill`: the whole forward over `ids`, every position's logits `[B, seq, V]` computed and
  returned (no KV cache kept); checked: the logits at 8 spread positions and the last.
* `train`: forward + mean next-token cross-entropy + backward + AdamW; checked: the first
  step's loss and the gradients' global norm (before the update).

Inference (decode, prefill) holds the parameters in the workload's dtype, as a bf16 checkpoint
loads (HF PyTorch's `dtype=` does the same); training keeps float32 parameters and computes in
the workload's dtype. The jimm contenders take the `attention` option (a tokamax backend name)
as the ViT benches do (`benchmarks.worker._attention`).

A contender's `compile` is its first call, timed; the worker reports compile time as that first
call minus the median steady call. Like `benchmarks.worker`, nothing here imports a package at
module level: legacy HF Flax runs this module on a PYTHONPATH where transformers 5 and jimm_linen
must not be imported.
"""

from __future__ import annotations

from benchmarks.worker import (B1, B2, EPS, LR, WD, Bench, _adamw, _attention, _first_call_timer, _jax_dtype,
                               _torch_setup, _versions)

JAX_VERSIONS = ("jax", "jaxlib", "flax", "optax")
CHECK_DECODE_STEPS = 4  # bf16 decode check: teacher-forced steps through the cache after the prompt


def _tokens(spec, name: str = "ids"):
    import numpy as np

    return np.load(spec["tokens"])[name].astype(np.int32)


def _param_dtype(spec):
    """The dtype the jimm contenders hold parameters in: the workload's for inference, float32
    (mixed precision) for training."""
    import jax.numpy as jnp

    return jnp.float32 if spec["task"] == "train" else _jax_dtype(spec)


def decode_check(spec, tokens, step, new_cache) -> dict:
    """What a decode workload compares. float32: the generated `tokens`, exactly. bfloat16: two
    correct implementations round differently (logits move by ~1e-2 of their range), and over a
    long batch of greedy steps some step has its top two logits closer than that, after which
    the rows go apart; so the decode path is checked on fixed input instead: the prompt
    (`ids`), then the `forced` tokens one at a time, through the KV cache, and the last
    position's logits after each, `[B, 1 + CHECK_DECODE_STEPS, V]` float32. `step(ids, cache)
    -> (last position's logits as float32 numpy, cache)` runs the contender's model;
    `new_cache(batch, length)` is its empty cache. The generate loop around the model is
    dtype-blind and checked by the float32 workloads."""
    import numpy as np

    if spec["dtype"] == "float32":
        return {"tokens": tokens}
    ids, forced = _tokens(spec), _tokens(spec, "forced")
    logits, cache = step(ids, new_cache(ids.shape[0], ids.shape[1] + forced.shape[1]))
    out = [logits]
    for i in range(forced.shape[1]):
        logits, cache = step(forced[:, i:i + 1], cache)
        out.append(logits)
    return {"forced_logits": np.stack(out, axis=1)}


def check_positions(seq: int) -> list[int]:
    """The prefill positions whose logits are compared: 8 spread ones and the last."""
    return sorted({*range(0, seq, max(1, seq // 8)), seq - 1})


def _prefill_check(logits) -> dict:
    import numpy as np

    logits = np.asarray(logits, np.float32)
    return {"logits": logits[:, check_positions(logits.shape[1])]}


def _bench(spec, run_once, check, versions, first_token=None) -> Bench:
    """`run_once() -> output` run to completion; the last output is kept for `check(output)`,
    so the agreement check costs no extra call."""
    state = {}

    def step():
        state["out"] = run_once()

    return Bench(_first_call_timer(step), step, lambda: check(state["out"]), versions, first_token=first_token)


def _decode_bench(spec, generate, check, versions) -> Bench:
    """`generate(n) -> the n new tokens [B, n]` run to completion: one step is
    `generate(new_tokens)`, `first_token` is `generate(1)`."""
    return _bench(spec, lambda: generate(spec["new_tokens"]), check, versions, first_token=lambda: generate(1))


def _train_bench(spec, step_once, versions) -> Bench:
    """`step_once() -> (loss, grad_norm)`; only the first step's are kept, for the check."""
    state = {}

    def step():
        loss, gnorm = step_once()
        state.setdefault("check", {"loss": loss, "grad_norm": gnorm})

    return Bench(_first_call_timer(step), step, lambda: state["check"], versions)


# --- jimm ----------------------------------------------------------------------------------------

def jimm_linen_bench(spec) -> Bench:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jimm_linen
    from jimm_linen import training

    ids = jnp.asarray(_tokens(spec))
    module, variables = jimm_linen.from_pretrained(
        spec["checkpoint"], attention_fn=_attention(spec), dtype=_jax_dtype(spec),
        param_dtype=_param_dtype(spec), scan=spec.get("scan", True), remat_policy=spec.get("remat", "none"))
    versions = _versions(*JAX_VERSIONS)
    if spec["task"] == "decode":
        def generate(n):
            out = jimm_linen.generate(module, variables, ids, max_new_tokens=n, eos_token_id=[], pad_token_id=0)
            return np.asarray(out.sequences)[:, ids.shape[1]:]

        apply = jax.jit(lambda v, x, c: module.apply(v, x, cache=c, logits_to_keep=1))

        def step(x, cache):
            logits, cache = apply(variables, jnp.asarray(x), cache)
            return np.asarray(logits[:, -1], np.float32), cache

        return _decode_bench(spec, generate, lambda t: decode_check(spec, t, step, module.init_cache), versions)
    if spec["task"] == "prefill":
        fwd = jax.jit(lambda v, x: module.apply(v, x))
        return _bench(spec, lambda: jax.block_until_ready(fwd(variables, ids)), _prefill_check, versions)
    tx = _adamw()
    holder = {"state": training.init_train_state(module, tx, variables["params"])}
    del variables
    step_fn = training.make_train_step(module, tx)
    batch = {"input_ids": ids}

    def step_once():
        holder["state"], metrics = step_fn(holder["state"], batch)
        jax.block_until_ready(holder["state"].params)
        return np.float32(metrics["loss"]), np.float32(metrics["grad_norm"])

    return _train_bench(spec, step_once, versions)


def jimm_nnx_bench(spec) -> Bench:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jimm_nnx

    if spec["task"] == "train":
        raise ValueError("jimm_nnx has no decoder training step of its own: jimm_linen.training trains decoders")
    ids = jnp.asarray(_tokens(spec))
    lm = jimm_nnx.CausalLM.from_pretrained(spec["checkpoint"], sharding=jimm_nnx.NoSharding(),
                                           attention_fn=_attention(spec), dtype=_jax_dtype(spec),
                                           param_dtype=_param_dtype(spec), scan=spec.get("scan", True))
    versions = _versions(*JAX_VERSIONS)
    if spec["task"] == "decode":
        def generate(n):
            out = lm.generate(ids, max_new_tokens=n, eos_token_id=[], pad_token_id=0)
            return np.asarray(out.sequences)[:, ids.shape[1]:]

        def step(x, cache):
            logits, cache = lm(jnp.asarray(x), cache=cache)
            return np.asarray(logits[:, -1], np.float32), cache

        return _decode_bench(spec, generate, lambda t: decode_check(spec, t, step, lm.init_cache), versions)
    return _bench(spec, lambda: jax.block_until_ready(lm(ids)), _prefill_check, versions)


# --- HF PyTorch ----------------------------------------------------------------------------------

def _torch_bench(spec, compiled: bool) -> Bench:
    """HF `*ForCausalLM` in PyTorch. Decode with `compiled`: transformers 5's documented way,
    `generate(cache_implementation="static", compile_config=CompileConfig(...))`, which
    `torch.compile`s the forward of the decode steps (the prefill runs eager): on CUDA in
    transformers' default mode, "reduce-overhead" (CUDA graphs); on CPU in mode "default" with
    the CPU opt-in (`_compile_all_devices`), since transformers compiles on accelerators only by
    default. The bf16 decode check (`decode_check`) runs the model uncompiled through a
    `DynamicCache`, for `compiled` too. Prefill / train with `compiled`: `torch.compile` of the
    model / the loss function. What a timed call leaves on the device (prefill logits, the
    gradient norm) reaches the host only for the check."""
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    tdtype, device, kw, sync = _torch_setup(spec, None)
    model = AutoModelForCausalLM.from_pretrained(spec["checkpoint"], dtype=tdtype, **kw).to(device)
    ids = torch.from_numpy(_tokens(spec).astype(np.int64)).to(device)
    versions = {**_versions("torch"), "transformers": transformers.__version__}
    if spec["task"] == "decode":
        model.eval()
        model.generation_config.eos_token_id = None  # every row runs to new_tokens
        gen_kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
        if compiled:
            cuda = device.startswith("cuda")
            cc = transformers.CompileConfig(fullgraph=True, dynamic=False, mode="reduce-overhead" if cuda else "default")
            if not cuda:
                cc._compile_all_devices = True
            gen_kw.update(cache_implementation="static", compile_config=cc)

        def generate(n):
            with torch.inference_mode():
                out = model.generate(ids, max_new_tokens=n, **gen_kw)
            sync()
            return out[:, ids.shape[1]:].cpu().numpy().astype(np.int32)

        def step(x, cache):
            with torch.inference_mode():
                out = model(input_ids=torch.from_numpy(x.astype(np.int64)).to(device), past_key_values=cache,
                            use_cache=True, logits_to_keep=1)
            return out.logits[:, -1].float().cpu().numpy(), out.past_key_values

        def new_cache(batch, length):
            return transformers.DynamicCache(config=model.config)

        return _decode_bench(spec, generate, lambda t: decode_check(spec, t, step, new_cache), versions)
    if spec["task"] == "prefill":
        model.eval()
        fwd = torch.compile(model) if compiled else model

        def run_once():
            with torch.inference_mode():
                logits = fwd(input_ids=ids, use_cache=False).logits
            sync()
            return logits

        return _bench(spec, run_once, lambda logits: _prefill_check(logits.float().cpu().numpy()), versions)
    model.train()  # the checkpoint has no dropout: same math as eval
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)

    def loss_fn(x):
        return model(input_ids=x, labels=x, use_cache=False).loss  # mean next-token CE, float32 logits

    lf = torch.compile(loss_fn) if compiled else loss_fn
    first_norm = []  # only the first step's is checked: the timed steps do not compute it

    def step_once():
        loss = lf(ids)
        loss.backward()
        if not first_norm:
            first_norm.append(torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in model.parameters()
                                                                    if p.grad is not None])).item())
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return np.float32(loss.item()), np.float32(first_norm[0])

    return _train_bench(spec, step_once, versions)


# --- legacy HF Flax ------------------------------------------------------------------------------

def legacy_hf_flax_bench(spec) -> Bench:
    """`transformers==4.57.6` `FlaxLlamaForCausalLM` (side-installed), `from_pt=True` from the same
    safetensors file. Decode: its `generate` (greedy `lax.while_loop` over a KV cache) under one
    `jax.jit`, with the vocabulary size as EOS id (it needs a positive one; no token has it). Prefill / train: `jax.jit`
    of a function of its params, the train step donating parameters and optimizer state."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import transformers
    from transformers import FlaxLlamaForCausalLM
    from transformers.utils import logging

    if spec["model"] != "llama":
        raise ValueError(f"legacy HF Flax has no {spec['model']!r} model here (transformers 4.57.6 Flax: Llama only)")
    logging.set_verbosity_error()
    ids = jnp.asarray(_tokens(spec))
    model = FlaxLlamaForCausalLM.from_pretrained(spec["checkpoint"], from_pt=True, dtype=_jax_dtype(spec))
    versions = {**_versions(*JAX_VERSIONS), "transformers": transformers.__version__}
    params = model.params
    if spec["task"] == "decode":
        if spec["dtype"] != "float32":
            raise ValueError(f"legacy HF Flax decode is checked on its tokens, which {spec['dtype']} does not "
                             "keep equal across contenders (`decode_check`): float32 decode workloads only")
        gen = jax.jit(lambda p, x, n: model.generate(x, params=p, max_new_tokens=n, do_sample=False, pad_token_id=0,
                                                     eos_token_id=model.config.vocab_size).sequences,
                      static_argnums=2)
        return _decode_bench(spec, lambda n: np.asarray(gen(params, ids, n))[:, ids.shape[1]:],
                             lambda t: {"tokens": t}, versions)

    def logits_of(p, x):
        return model(x, params=p, train=False).logits

    if spec["task"] == "prefill":
        fwd = jax.jit(logits_of)
        return _bench(spec, lambda: jax.block_until_ready(fwd(params, ids)), _prefill_check, versions)
    tx = _adamw()

    def loss_fn(p, x):
        logits = logits_of(p, x)[:, :-1].astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]).mean()

    def update(p, o, x):
        loss, g = jax.value_and_grad(loss_fn)(p, x)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss, optax.global_norm(g)

    jitted = jax.jit(update, donate_argnums=(0, 1))
    holder = {"p": params, "o": tx.init(params)}

    def step_once():
        holder["p"], holder["o"], loss, gnorm = jitted(holder["p"], holder["o"], ids)
        jax.block_until_ready(holder["p"])
        return np.float32(loss), np.float32(gnorm)

    return _train_bench(spec, step_once, versions)


CONTENDERS = {
    "jimm_linen": jimm_linen_bench,
    "jimm_nnx": jimm_nnx_bench,
    "hf_torch_eager": lambda spec: _torch_bench(spec, compiled=False),
    "hf_torch_compile": lambda spec: _torch_bench(spec, compiled=True),
    "legacy_hf_flax": legacy_hf_flax_bench,
}


def first_call_compile(first_call_s: float, steady_s: float) -> float:
    """Compile time of a decoder contender: its first call minus a steady call (never negative:
    a noisy host can make the first call the faster)."""
    return max(0.0, first_call_s - steady_s)

