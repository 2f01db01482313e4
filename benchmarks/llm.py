"""Decoder contenders for `benchmarks.worker` (workloads with a decoder `model`, `--suite llm`).

Tasks, on the token ids in `spec["tokens"]` (an .npz with `ids [B, seq]` int32):

* `decode`: greedy generation of exactly `new_tokens` tokens after the `ids` prompt (no EOS, no
  padding); one step = one whole generate call (its prefill included); checked: the new tokens,
  which must be identical across contenders.
* `prefill`: the whole forward over `ids`, every position's logits `[B, seq, V]` computed and
  returned (no KV cache kept); checked: the logits at 8 spread positions and the last.
* `train`: forward + mean next-token cross-entropy + backward + AdamW; checked: the first
  step's loss and the gradients' global norm (before the update).

A contender's `compile` is its first call, timed; the worker reports compile time as that first
call minus the median steady call. Like `benchmarks.worker`, nothing here imports a package at
module level: legacy HF Flax runs this module on a PYTHONPATH where transformers 5 and jimm_linen
must not be imported.
"""

from __future__ import annotations

from benchmarks.worker import B1, B2, EPS, LR, WD, Bench, _adamw, _first_call_timer, _jax_dtype, _torch_setup, _versions

JAX_VERSIONS = ("jax", "jaxlib", "flax", "optax")


def _tokens(spec):
    import numpy as np

    return np.load(spec["tokens"])["ids"].astype(np.int32)


def check_positions(seq: int) -> list[int]:
    """The prefill positions whose logits are compared: 8 spread ones and the last."""
    return sorted({*range(0, seq, max(1, seq // 8)), seq - 1})


def _prefill_check(logits) -> dict:
    import numpy as np

    logits = np.asarray(logits, np.float32)
    return {"logits": logits[:, check_positions(logits.shape[1])]}


def _bench(spec, run_once, check, versions) -> Bench:
    """`run_once() -> output` run to completion; the last output is kept for `check(output)`,
    so the agreement check costs no extra call."""
    state = {}

    def step():
        state["out"] = run_once()

    return Bench(_first_call_timer(step), step, lambda: check(state["out"]), versions)


def _train_bench(spec, step_once, versions) -> Bench:
    """`step_once() -> (loss, grad_norm)` of the step just run; the first step's are checked."""
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
    module, variables = jimm_linen.from_pretrained(spec["checkpoint"], dtype=_jax_dtype(spec),
                                                   scan=spec.get("scan", True), remat_policy=spec.get("remat", "none"))
    versions = _versions(*JAX_VERSIONS)
    if spec["task"] == "decode":
        def run_once():
            out = jimm_linen.generate(module, variables, ids, max_new_tokens=spec["new_tokens"], eos_token_id=[],
                                      pad_token_id=0)
            return np.asarray(out.sequences)[:, ids.shape[1]:]

        return _bench(spec, run_once, lambda t: {"tokens": t}, versions)
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
    lm = jimm_nnx.CausalLM.from_pretrained(spec["checkpoint"], sharding=jimm_nnx.NoSharding(), dtype=_jax_dtype(spec),
                                           scan=spec.get("scan", True))
    versions = _versions(*JAX_VERSIONS)
    if spec["task"] == "decode":
        def run_once():
            out = lm.generate(ids, max_new_tokens=spec["new_tokens"], eos_token_id=[], pad_token_id=0)
            return np.asarray(out.sequences)[:, ids.shape[1]:]

        return _bench(spec, run_once, lambda t: {"tokens": t}, versions)
    return _bench(spec, lambda: jax.block_until_ready(lm(ids)), _prefill_check, versions)


# --- HF PyTorch ----------------------------------------------------------------------------------

def _torch_bench(spec, compiled: bool) -> Bench:
    """HF `*ForCausalLM` in PyTorch. Decode with `compiled`: transformers 5's documented way,
    `generate(cache_implementation="static", compile_config=CompileConfig(...))`, which
    `torch.compile`s the forward of the decode steps (the prefill runs eager); its CPU opt-in
    (`_compile_all_devices`) is set since transformers compiles on accelerators only by default.
    Prefill / train with `compiled`: `torch.compile` of the model / the loss function."""
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
        gen_kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=spec["new_tokens"], do_sample=False,
                      pad_token_id=0)
        if compiled:
            cc = transformers.CompileConfig(fullgraph=True, dynamic=False, mode="default")
            cc._compile_all_devices = True
            gen_kw.update(cache_implementation="static", compile_config=cc)

        def run_once():
            with torch.inference_mode():
                out = model.generate(ids, **gen_kw)
            sync()
            return out[:, ids.shape[1]:].cpu().numpy().astype(np.int32)

        return _bench(spec, run_once, lambda t: {"tokens": t}, versions)
    if spec["task"] == "prefill":
        model.eval()
        fwd = torch.compile(model) if compiled else model

        def run_once():
            with torch.inference_mode():
                logits = fwd(input_ids=ids, use_cache=False).logits
            sync()
            return logits.float().cpu().numpy()

        return _bench(spec, run_once, _prefill_check, versions)
    model.train()  # the checkpoint has no dropout: same math as eval
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)

    def loss_fn(x):
        return model(input_ids=x, labels=x, use_cache=False).loss  # mean next-token CE, float32 logits

    lf = torch.compile(loss_fn) if compiled else loss_fn

    def step_once():
        loss = lf(ids)
        loss.backward()
        gnorm = torch.linalg.vector_norm(torch.stack([p.grad.double().norm() for p in model.parameters()
                                                      if p.grad is not None]))
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return np.float32(loss.item()), np.float32(gnorm.item())

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
        gen = jax.jit(lambda p, x: model.generate(x, params=p, max_new_tokens=spec["new_tokens"], do_sample=False,
                                                  pad_token_id=0, eos_token_id=model.config.vocab_size).sequences)
        return _bench(spec, lambda: np.asarray(gen(params, ids))[:, ids.shape[1]:], lambda t: {"tokens": t}, versions)

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

