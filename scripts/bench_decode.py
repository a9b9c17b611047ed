"""Prefill and decode throughput of :func:`decoding.generate.generate`, and the loop overhead.

For a named preset (random weights) and each batch size, with full-length random prompts of
``--prompt-len`` tokens and ``--new-tokens`` greedy tokens per row (no EOS, so every row runs
to the limit), it measures in one process:

* prefill: one jitted ragged prefill call (:func:`decoding.prefill.prefill`), tokens/s;
* loop: the jitted ``lax.while_loop`` alone (:func:`init_carry` + :func:`decode_loop`, cache
  donated as in ``generate``). It runs ``steps = new_tokens - 1`` model calls: the first token
  comes from the prefill logits, so ``decode_tok_s = batch x steps / loop time`` does not
  count it;
* step: one jitted :func:`decode_step` (carry donated), two ways:

  - ``step_ms``: a single step timed on its own, blocking (dispatch + run + wait), the median
    of every single step of a fresh carry's ``steps`` steps over all repeats; the loop
    overhead as the issue defines it is ``loop_overhead = 1 - (steps x step_ms) / loop time``;
  - ``chain_step_ms``: the same step dispatched ``steps`` times back to back from the host and
    waited for once at the end, divided by ``steps``; ``loop_overhead_chain = 1 - chain time /
    loop time`` compares the fused loop with an equally long dispatched chain (both sides
    equally long, so a shared CPU disturbs them alike).

  Negative overhead means the fused loop beats stepping from the host;
* generate: the public entry point end to end (host checks + prefill + loop), fresh caches
  per call built outside the timed region;
* peer (optional): if ``torch`` and ``transformers`` import, a random Hugging Face
  ``LlamaForCausalLM`` with the preset's shape is saved as safetensors and loaded here with
  ``models.load_hf_checkpoint``, so both sides run the same weights (float32); HF
  ``generate`` (greedy, same lengths, ``--torch-threads`` intra-op threads) is timed and
  reported as a ratio, with the fraction of identical tokens. Skipped with a note otherwise.

Compile time is reported apart (lowering + compiling, or a first call's excess); warm-up
calls are excluded; each figure except ``step_ms`` (a median, as defined above) is the best of
``--repeats`` timed calls (on a shared CPU the minimum is the least disturbed run).
``--quick`` uses batches 1 and 4, 16-token prompts, 16 new tokens and two repeats (about 40 s
wall on a 2-core CPU shared at load average 4.5, half of it compiling).

    python scripts/bench_decode.py --quick
    python scripts/bench_decode.py --preset small --batches 1,8,32 --json runs/bench_decode.json
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from _bench_common import add_common_args, compile_timed, measure_calls, print_table, time_runs, write_json
from constraints.protocol import Unconstrained
from decoding.generate import decode_loop, decode_step, generate, init_carry
from decoding.inputs import CallInputs
from decoding.prefill import bucket_length, pad_prompts, prefill
from decoding.samplers import Greedy
from models import Decoder, init_cache, init_params, load_hf_checkpoint, preset


@functools.partial(jax.jit, static_argnums=0)
def _prefill(model, params, cache, prompts, lengths):
    return prefill(model, params, cache, prompts, lengths)


NO_CONSTRAINT = Unconstrained()


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def _loop(model, params, cache, first_logits, inputs):
    carry = init_carry(inputs, NO_CONSTRAINT, cache, first_logits)
    return decode_loop(model, params, carry, inputs, NO_CONSTRAINT)


@functools.partial(jax.jit, static_argnums=0, donate_argnames=("carry",))
def _step(model, params, carry, inputs):
    return decode_step(model, params, carry, inputs, NO_CONSTRAINT)


def _copy(tree):
    return jax.block_until_ready(jax.tree.map(jnp.copy, tree))


def bench_batch(model, params, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    """All our measurements at one batch size (see the module docstring)."""
    config = model.config
    capacity = prompt_len + new_tokens
    rng = np.random.default_rng(batch)
    prompts = rng.integers(0, config.vocab_size, size=(batch, prompt_len)).astype(np.int32)
    lengths = np.full(batch, prompt_len, np.int32)
    bucket = bucket_length(prompt_len, capacity)
    padded = jnp.asarray(pad_prompts(prompts, lengths, bucket))
    settings = CallInputs(  # what generate's decoding.inputs.prepare builds for this call
        prompts=padded,
        prompt_lengths=lengths,
        limits=np.full((batch,), new_tokens, np.int32),
        eos_ids=np.zeros((0,), np.int32),
        pad_id=np.int32(0),
        sampler=Greedy(),
        key=jax.random.key(0),
        width=new_tokens,
    )
    row = {"batch": batch, "prompt": prompt_len, "new": new_tokens}

    cache = init_cache(config, batch, capacity)
    prefill_fn, row["prefill_compile_s"] = compile_timed(_prefill, model, params, cache, padded, jnp.asarray(lengths))
    prefill_s = time_runs(prefill_fn, params, cache, padded, jnp.asarray(lengths), warmup=1, repeats=repeats).min_s
    first_logits, prefilled = jax.block_until_ready(prefill_fn(params, cache, padded, jnp.asarray(lengths)))
    row["prefill_ms"] = prefill_s * 1e3
    row["prefill_tok_s"] = batch * prompt_len / prefill_s

    def fresh_carry():
        return jax.block_until_ready(init_carry(settings, NO_CONSTRAINT, _copy(prefilled), first_logits))

    loop_fn, row["loop_compile_s"] = compile_timed(_loop, model, params, _copy(prefilled), first_logits, settings)
    step_fn, row["step_compile_s"] = compile_timed(_step, model, params, fresh_carry(), settings)
    steps = new_tokens - 1  # the loop's model calls: the first token comes from the prefill
    loops, chains, singles = [], [], []
    for i in range(repeats + 1):  # loop, chain and single steps interleaved; round 0 is the warm-up
        cache_copy = _copy(prefilled)
        start = time.perf_counter()
        jax.block_until_ready(loop_fn(params, cache_copy, first_logits, settings))
        loops.append(time.perf_counter() - start)
        carry = fresh_carry()
        start = time.perf_counter()
        for _ in range(steps):  # dispatched one by one from the host, waited for once
            carry = step_fn(params, carry, settings)
        jax.block_until_ready(carry)
        chains.append(time.perf_counter() - start)
        carry = fresh_carry()
        for _ in range(steps):  # each step timed on its own, blocking
            start = time.perf_counter()
            carry = jax.block_until_ready(step_fn(params, carry, settings))
            if i:
                singles.append(time.perf_counter() - start)
    loop_s, chain_s, step_s = min(loops[1:]), min(chains[1:]), float(np.median(singles))
    row["loop_ms"] = loop_s * 1e3
    row["decode_tok_s"] = batch * steps / loop_s
    row["step_ms"] = step_s * 1e3
    row["loop_overhead"] = 1.0 - steps * step_s / loop_s
    row["chain_step_ms"] = chain_s / steps * 1e3
    row["loop_overhead_chain"] = 1.0 - chain_s / loop_s

    measured = measure_calls(
        lambda c: generate(model, params, c, prompts, lengths, max_new_tokens=new_tokens,
                           vocab_size=config.vocab_size),
        lambda: (init_cache(config, batch, capacity),),
        repeats=repeats,
    )
    row["generate_compile_s"] = measured.compile_s
    row["generate_ms"] = measured.runs.min_s * 1e3
    row["generate_tok_s"] = batch * new_tokens / measured.runs.min_s
    row["_tokens"] = np.asarray(measured.output.tokens)
    row["_prompts"] = prompts
    return row


def peer_available() -> str | None:
    """None if torch and transformers import, else the reason the peer is skipped."""
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    return f"peer skipped: {', '.join(missing)} not installed (pip install -e '.[peer]')" if missing else None


def hf_twin(config, seed: int):
    """A random HF LlamaForCausalLM shaped like ``config`` and our (config, params) loaded from its
    safetensors export: the same weights on both sides."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.dim,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=config.tie_embeddings,
        attention_bias=config.attention_bias,
        max_position_embeddings=4096,
    )
    hf_model = transformers.LlamaForCausalLM(hf_config).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder, safe_serialization=True)
        our_config, params = load_hf_checkpoint(folder)
    return hf_model, our_config, params


def bench_peer(hf_model, prompts: np.ndarray, new_tokens: int, repeats: int) -> tuple[float, np.ndarray]:
    """Best seconds of HF greedy ``generate`` for exactly ``new_tokens`` tokens, and its tokens."""
    import torch

    ids = torch.as_tensor(prompts, dtype=torch.long)
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  eos_token_id=None, pad_token_id=0)
    seconds = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            out = hf_model.generate(ids, **kwargs)
            if i:
                seconds.append(time.perf_counter() - start)
    return min(seconds), out[:, prompts.shape[1]:].numpy()


COLUMNS = ["batch", "prompt", "new", "prefill_tok_s", "decode_tok_s", "generate_tok_s", "loop_ms", "step_ms",
           "loop_overhead", "chain_step_ms", "loop_overhead_chain", "prefill_compile_s", "loop_compile_s", "step_compile_s", "generate_compile_s"]
PEER_COLUMNS = ["batch", "generate_tok_s", "hf_tok_s", "ours_over_hf", "same_tokens"]


def main(argv: list[str] | None = None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--preset", default="small", help="models preset to benchmark (default: small)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32; 1,4 with --quick)")
    parser.add_argument("--prompt-len", type=int, default=None, help="default 64 (16 with --quick)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 128 (16 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 5, 2 with --quick)")
    parser.add_argument("--no-peer", action="store_true", help="skip the transformers comparison")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads for the peer (default 1: OpenMP spin-waits collapse on a shared CPU)")
    args = parser.parse_args(argv)
    prompt_len = args.prompt_len or (16 if args.quick else 64)
    new_tokens = args.new_tokens or (16 if args.quick else 128)
    repeats = args.repeats or (2 if args.quick else 5)
    batches = [int(b) for b in (args.batches or ("1,4" if args.quick else "1,8,32")).split(",")]
    if new_tokens < 2 or prompt_len < 1 or min(batches) < 1:
        raise ValueError("need --new-tokens >= 2, --prompt-len >= 1 and positive batch sizes")

    load_start = os.getloadavg()[0]
    config = preset(args.preset)
    note = "peer disabled (--no-peer)" if args.no_peer else peer_available()
    hf_model = None
    if note is None:
        import torch

        torch.set_num_threads(args.torch_threads)
        hf_model, config, params = hf_twin(config, seed=0)
    else:
        params = init_params(config, jax.random.key(0))
    model = Decoder(config)
    print(f"preset {args.preset}: dim {config.dim}, {config.n_layers} layers, vocab {config.vocab_size}, "
          f"{sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M params, {config.dtype}; "
          f"backend {jax.default_backend()}, {os.cpu_count()} cpus, load average {load_start:.1f} at start; "
          "greedy, no EOS")

    rows, peer_rows = [], []
    for batch in batches:
        row = bench_batch(model, params, batch, prompt_len, new_tokens, repeats)
        tokens, prompts = row.pop("_tokens"), row.pop("_prompts")
        rows.append(row)
        if hf_model is not None:
            hf_s, hf_tokens = bench_peer(hf_model, prompts, new_tokens, repeats)
            hf_tok_s = batch * new_tokens / hf_s  # end to end, like generate_tok_s: every new token
            peer_rows.append({"batch": batch, "generate_tok_s": row["generate_tok_s"], "hf_tok_s": hf_tok_s,
                              "ours_over_hf": row["generate_tok_s"] / hf_tok_s,
                              "same_tokens": float(np.mean(hf_tokens == tokens))})

    print_table(rows, COLUMNS, title=f"decode: {args.preset}, prompt {prompt_len}, {new_tokens} new tokens")
    if peer_rows:
        print_table(peer_rows, PEER_COLUMNS, title=f"peer: transformers generate, same weights, torch threads {args.torch_threads} (ratio ours / HF)")
    else:
        print(f"\n{note}")
    write_json(args.json, {"preset": args.preset, "prompt_len": prompt_len, "new_tokens": new_tokens,
                           "repeats": repeats, "load_average_start": load_start, "rows": rows, "peer": peer_rows, "peer_note": note,
                           "torch_threads": args.torch_threads})


if __name__ == "__main__":
    sys.exit(main())
