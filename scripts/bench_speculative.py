"""Speculative decoding vs plain greedy decoding on a trained byte-level target/draft pair.

The pair comes from ``scripts/train_lm.py`` (``--ckpt DIR`` holding ``target/`` and ``draft/``;
trained first if missing: the full recipe, or with ``--quick`` a tiny one). Prompts are real
code: snippets of the *held-out* stdlib files, ragged lengths. For each batch size it times

* plain greedy :func:`decoding.generate.generate`,
* :func:`decoding.speculative.speculative_generate` with the draft model (``ModelDraft``),
* the same with n-gram prompt lookup (``PromptLookupDraft``, no model),

and reports tokens/s, the speedup over plain greedy at the same batch, the acceptance rate
(kept drafts / proposed drafts), new tokens per target call, and whether the tokens are
identical to plain greedy's (they must be). A k sweep (drafts per round) runs at the batch
sizes of ``--sweep-batches`` (default 1 and 8); the goals compare batch 8 with batch 1 both at
the table's k and at each batch size's best k (larger batches favour smaller k: a round's
target call reads ``batch x (k + 1)`` tokens and stops being memory-bound sooner).

Every case goes through the public entry points, which validate on the host and jit inside,
so compile time is the first call's excess over a warm call. The timed calls of all cases of
one batch size are interleaved (``_bench_common.measure_interleaved``), so load drift on a
shared machine hits them alike; ``speedup`` compares best-of-N times, ``speedup_med`` medians.
Each timed call gets fresh caches (they are donated), built outside the timed region, each as
small as its case needs: longest prompt + new tokens (+ k + 1 for speculative decoding).

Peer (optional): ``--peer-python`` names an interpreter with torch + transformers; the pair is
exported as HF Llama checkpoints and timed with transformers ``generate`` at batch 1 (greedy,
assisted generation with the draft at a constant k, prompt lookup); skipped with a note if
that interpreter cannot import them.

    python scripts/bench_speculative.py --quick
    python scripts/bench_speculative.py --ckpt runs/lm --json runs/bench_speculative.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
import safetensors.numpy
from flax import traverse_util

import train_lm
from _bench_common import add_common_args, measure_interleaved, print_table, write_json
from decoding.drafts import ModelDraft, PromptLookupDraft
from decoding.generate import generate
from decoding.speculative import speculative_generate
from models import Decoder, LlamaConfig, init_cache, init_params, load_hf_checkpoint, preset, restore_params
from models.hf_checkpoint import hf_name

# Recipes used when --ckpt holds no trained pair: ((target preset, settings), (draft preset, settings)).
# The full target, "medium" (19.1M parameters, 76 MB), outgrows a 32 MB L3 cache, so its decode step
# is memory-bound on a CPU as it is on accelerators. Training the pair takes about an hour on 2 CPU
# cores (~55 min the target, ~6 min the draft).
FULL_RECIPE = (
    ("medium", dict(steps=1000, batch=16, seq_len=256, learning_rate=2e-3, warmup_steps=40, checkpoint_every=100)),
    ("draft", dict(steps=1000, batch=16, seq_len=256, warmup_steps=40, checkpoint_every=100)),
)
QUICK_RECIPE = (
    ("draft", dict(steps=30, batch=16, seq_len=64, warmup_steps=4, checkpoint_every=20)),
    ("tiny", dict(steps=30, batch=16, seq_len=64, warmup_steps=4, checkpoint_every=20)),
)


@dataclasses.dataclass(frozen=True)
class Pair:
    """A trained target and draft sharing the byte vocabulary."""

    target: Decoder
    target_params: dict
    draft: Decoder
    draft_params: dict
    presets: tuple[str, str]  # (target, draft)


def _restore(run_dir: str) -> tuple[Decoder, dict, str]:
    with open(os.path.join(run_dir, "metadata.json")) as f:
        name = json.load(f)["preset"]
    config = preset(name)
    like = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    return Decoder(config), restore_params(os.path.join(run_dir, "params"), like=like), name


def load_pair(ckpt: str, quick: bool) -> Pair:
    """Restores ``ckpt/target`` and ``ckpt/draft``, training them first if either is missing."""
    dirs = [os.path.join(ckpt, role) for role in ("target", "draft")]
    if not all(os.path.exists(os.path.join(d, "metadata.json")) for d in dirs):
        recipe = QUICK_RECIPE if quick else FULL_RECIPE
        print(f"no trained pair in {ckpt}: training {recipe}", file=sys.stderr)
        corpus = train_lm.load_corpus(4_000_000 if quick else None)
        for (name, settings), out in zip(recipe, dirs):
            train_lm.train(train_lm.TrainSettings(preset=name, **settings), corpus, out)
    (target, target_params, t_name), (draft, draft_params, d_name) = map(_restore, dirs)
    return Pair(target, target_params, draft, draft_params, (t_name, d_name))


def heldout_prompts(batch: int, max_len: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Code snippets from the held-out stdlib files: int32 [batch, max_len] right-padded and
    int32 [batch] lengths in [max_len // 2, max_len], each starting at a line start (files of
    more than 2 * max_len bytes, in path order, one per row, cycling)."""
    root = train_lm.stdlib_root()
    files = [p for p in train_lm.stdlib_sources(root) if train_lm.is_heldout(p)]
    files = [p for p in files if os.path.getsize(os.path.join(root, p)) > 2 * max_len]
    rng = np.random.default_rng(seed)
    prompts = np.zeros((batch, max_len), np.int32)
    lengths = rng.integers(max_len // 2, max_len + 1, size=batch).astype(np.int32)
    for row in range(batch):
        with open(os.path.join(root, files[row % len(files)]), "rb") as f:
            text = f.read()
        start = int(rng.integers(0, max(len(text) - max_len, 1)))
        start = text.find(b"\n", start) + 1 if start else 0
        snippet = np.frombuffer(text[start : start + lengths[row]], np.uint8)
        lengths[row] = max(snippet.shape[0], 1)
        prompts[row, : snippet.shape[0]] = snippet
    return prompts, lengths


def bench_batch(pair: Pair, batch: int, ks: tuple[int, ...], args) -> tuple[list[dict], tuple[np.ndarray, ...]]:
    """Rows for one batch size: plain greedy, then each draft source at each k in ``ks``, their
    timed calls interleaved; plus (prompts, lengths, greedy tokens) of this batch."""
    prompts, lengths = heldout_prompts(batch, args.prompt_len)
    new = args.new_tokens
    # Caches as small as each case needs (attention reads the whole capacity): the longest prompt
    # plus the new tokens, plus k + 1 for the entries a verification writes past the last token.
    needed = int(lengths.max()) + new
    drafts = {  # method name -> a fresh draft source of capacity c (ModelDraft carries its own cache)
        "spec-model": lambda c: ModelDraft(pair.draft, pair.draft_params, init_cache(pair.draft.config, batch, c)),
        "spec-lookup": lambda c: PromptLookupDraft(ngram=args.ngram, vocab_size=pair.target.config.vocab_size),
    }
    cases = {("greedy", 0): (
        lambda cache: generate(pair.target, pair.target_params, cache, prompts, lengths, max_new_tokens=new),
        lambda: (init_cache(pair.target.config, batch, needed),),
    )}
    for k in ks:
        for method, make_draft in drafts.items():

            def call(cache, draft, k=k):
                return speculative_generate(
                    pair.target, pair.target_params, cache, prompts, lengths,
                    draft=draft, num_draft_tokens=k, max_new_tokens=new,
                )

            capacity = needed + k + 1
            cases[(method, k)] = (
                call,
                lambda make_draft=make_draft, c=capacity: (init_cache(pair.target.config, batch, c), make_draft(c)),
            )
    by_name = measure_interleaved({f"{method}/k={k}": case for (method, k), case in cases.items()}, args.repeats)
    measured = {(method, k): by_name[f"{method}/k={k}"] for method, k in cases}

    plain = measured[("greedy", 0)]
    reference_tokens, reference_lengths = np.asarray(plain.output.tokens), np.asarray(plain.output.lengths)
    produced = float(np.sum(reference_lengths))
    rows = []
    for (method, k), result in measured.items():
        out_lengths = np.asarray(result.output.lengths)
        row = {
            "batch": batch, "method": method, "k": k,
            "tok_per_s": float(np.sum(out_lengths)) / result.runs.min_s,
            "speedup": plain.runs.min_s / result.runs.min_s * float(np.sum(out_lengths)) / produced,
            "speedup_med": plain.runs.median_s / result.runs.median_s * float(np.sum(out_lengths)) / produced,
            "accept_rate": "-", "tok_per_call": 1.0, "identical": "-",
            "best_s": result.runs.min_s, "median_s": result.runs.median_s, "compile_s": result.compile_s,
        }
        if k:
            stats = result.output.stats
            rounds = np.asarray(stats.rounds)
            row["accept_rate"] = float(np.sum(np.maximum(np.asarray(stats.accepted), 0))) / max(float(np.sum(rounds)) * k, 1.0)
            row["tok_per_call"] = float(np.sum(out_lengths)) / float(np.sum(1 + rounds))
            row["identical"] = bool(np.array_equal(np.asarray(result.output.tokens), reference_tokens)
                                    and np.array_equal(out_lengths, reference_lengths))
        rows.append(row)
    return rows, (prompts, lengths, reference_tokens)


# Runs under --peer-python (an interpreter with torch + transformers; it needs no jax): times HF
# generate at batch 1 (assisted generation supports batch 1 only) as greedy, assisted by the
# draft model with a constant k, and with prompt lookup. Reads a JSON spec on stdin.
_HF_WORKER = r"""
import json, sys, time
import torch
from transformers import AutoModelForCausalLM
spec = json.load(sys.stdin)
load = lambda d: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
target, draft = load(spec["target"]), load(spec["draft"])
draft.generation_config.num_assistant_tokens = spec["k"]
draft.generation_config.num_assistant_tokens_schedule = "constant"
draft.generation_config.assistant_confidence_threshold = 0.0
common = dict(max_new_tokens=spec["new_tokens"], min_new_tokens=spec["new_tokens"], do_sample=False, pad_token_id=0)
modes = {
    "hf-greedy": {},
    "hf-assisted": {"assistant_model": draft},
    "hf-lookup": {"prompt_lookup_num_tokens": spec["k"], "max_matching_ngram_size": spec["ngram"]},
}
results = {}
with torch.inference_mode():
    for name, extra in modes.items():
        target.generate(torch.tensor([spec["prompts"][0]]), **common, **extra)
        seconds, tokens = [], []
        for prompt in spec["prompts"]:
            ids = torch.tensor([prompt])
            start = time.perf_counter()
            out = target.generate(ids, **common, **extra)
            seconds.append(time.perf_counter() - start)
            tokens.append(out[0, len(prompt):].tolist())
        results[name] = {"seconds": seconds, "tokens": tokens}
json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}, sys.stdout)
"""


def export_hf(config: LlamaConfig, params: dict, out_dir: str) -> None:
    """Writes ``params`` as a Hugging Face LlamaForCausalLM checkpoint (config.json +
    model.safetensors) and checks that ``models.load_hf_checkpoint`` reads back the same arrays."""
    if config.attention_bias or config.rope_scaling is not None or config.sliding_window is not None:
        raise ValueError("export_hf writes plain Llama configs only (no attention bias, rope scaling, window)")
    os.makedirs(out_dir, exist_ok=True)
    flat = traverse_util.flatten_dict(jax.device_get(params))
    tensors = {}
    for key, value in flat.items():
        name, transpose = hf_name(key)
        value = np.asarray(value, np.float32)
        tensors[name] = np.ascontiguousarray(value.T if transpose else value)
    safetensors.numpy.save_file(tensors, os.path.join(out_dir, "model.safetensors"))
    hf_config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
        "hidden_size": config.dim, "intermediate_size": config.hidden_dim, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads, "head_dim": config.head_dim,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta, "tie_word_embeddings": config.tie_embeddings,
        "max_position_embeddings": 4096, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "torch_dtype": "float32", "bos_token_id": None, "eos_token_id": None,
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    _, loaded = load_hf_checkpoint(out_dir)
    for key, value in traverse_util.flatten_dict(loaded).items():
        if not np.array_equal(np.asarray(value), np.asarray(flat[key])):
            raise ValueError(f"export_hf: {'/'.join(key)} does not round-trip through {out_dir}")


def hf_peer(pair: Pair, python: str, prompts: np.ndarray, lengths: np.ndarray, reference: np.ndarray, args) -> list[dict]:
    """Rows for HF generate at batch 1 on ``prompts`` (int32 [n, P]); ``reference`` (int32 [n, new])
    holds our greedy tokens for them."""
    with tempfile.TemporaryDirectory() as tmp:
        for role, model, params in (("target", pair.target, pair.target_params), ("draft", pair.draft, pair.draft_params)):
            export_hf(model.config, params, os.path.join(tmp, role))
        spec = {
            "target": os.path.join(tmp, "target"), "draft": os.path.join(tmp, "draft"), "k": args.k,
            "ngram": args.ngram, "new_tokens": args.new_tokens,
            "prompts": [row[:n].tolist() for row, n in zip(prompts, lengths)],
        }
        done = subprocess.run([python, "-c", _HF_WORKER], input=json.dumps(spec), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"HF peer failed under {python}:\n{done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    rows = []
    for method, result in report["results"].items():
        produced = sum(len(t) for t in result["tokens"])
        rows.append({
            "batch": 1, "method": method, "k": 0 if method == "hf-greedy" else args.k,
            "tok_per_s": produced / sum(result["seconds"]),
            "identical": [t for t in result["tokens"]] == reference[:, : args.new_tokens].tolist(),
            "median_s": float(np.median(result["seconds"])),
        })
    for row in rows:
        row["speedup"] = row["tok_per_s"] / rows[0]["tok_per_s"]
    return rows


def _has_hf(python: str) -> bool:
    try:
        probe = subprocess.run([python, "-c", "import torch, transformers"], capture_output=True, check=False)
    except OSError:
        return False
    return probe.returncode == 0


def goals_of(rows: list[dict], k: int) -> dict:
    """The issue's goals from the measured rows: batch 1's best speedup over plain greedy (>= 2x),
    and speculative tokens/s at batch 8 over batch 1 (>= 3x), per draft source, both at the
    table's ``k`` and with each batch size's best k (where both batch sizes ran a sweep)."""
    goals = {}
    spec = [r for r in rows if r["k"]]
    at_batch1 = [r for r in spec if r["batch"] == 1]
    if at_batch1:
        best = max(at_batch1, key=lambda r: r["speedup"])
        goals["batch1_best_speedup"] = {"method": best["method"], "k": best["k"], "value": best["speedup"],
                                        "goal": 2.0, "identical": best["identical"]}
    plain = {r["batch"]: r for r in rows if not r["k"]}
    if 1 in plain and 8 in plain:
        goals["greedy_batch8_over_batch1"] = {"value": plain[8]["tok_per_s"] / plain[1]["tok_per_s"]}
    for method in ("spec-model", "spec-lookup"):
        mine = [r for r in spec if r["method"] == method]
        same_k = {r["batch"]: r for r in mine if r["k"] == k}
        if 1 in same_k and 8 in same_k:
            goals[f"{method}_batch8_over_batch1"] = {
                "k": k, "value": same_k[8]["tok_per_s"] / same_k[1]["tok_per_s"], "goal": 3.0}
        best = {b: max((r for r in mine if r["batch"] == b), key=lambda r: r["tok_per_s"], default=None) for b in (1, 8)}
        if all(best.values()) and any(r["k"] != k for r in mine):
            goals[f"{method}_batch8_over_batch1_best_k"] = {
                "k_batch1": best[1]["k"], "k_batch8": best[8]["k"],
                "value": best[8]["tok_per_s"] / best[1]["tok_per_s"], "goal": 3.0}
    return goals


def main(argv: list[str] | None = None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--ckpt", default=None, help="trained pair folder (default runs/lm, or runs/lm_quick with --quick)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32; quick 1,8)")
    parser.add_argument("--ks", default=None, help="k sweep (default 1..8; quick: only --k)")
    parser.add_argument("--sweep-batches", default=None, help="batch sizes that run the k sweep (default 1,8; quick 1)")
    parser.add_argument("--k", type=int, default=4, help="drafts per round in the batch table")
    parser.add_argument("--ngram", type=int, default=3, help="prompt lookup n-gram length")
    parser.add_argument("--prompt-len", type=int, default=None, help="longest prompt in bytes (default 256; quick 64)")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens per row (default 128; quick 32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case, interleaved (default 5; quick 3)")
    parser.add_argument("--peer-python", default=sys.executable,
                        help="interpreter with torch + transformers for the HF peer (default: this one)")
    parser.add_argument("--peer-prompts", type=int, default=None, help="prompts timed by the HF peer (default 4; quick 2)")
    args = parser.parse_args(argv)
    ints = lambda text: tuple(int(x) for x in text.split(","))  # noqa: E731
    args.ckpt = args.ckpt or os.path.join("runs", "lm_quick" if args.quick else "lm")
    args.batches = ints(args.batches or ("1,8" if args.quick else "1,8,32"))
    args.ks = ints(args.ks or (str(args.k) if args.quick else "1,2,3,4,5,6,7,8"))
    args.sweep_batches = ints(args.sweep_batches or ("1" if args.quick else "1,8"))
    args.prompt_len = args.prompt_len or (64 if args.quick else 256)
    args.new_tokens = args.new_tokens or (32 if args.quick else 128)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.peer_prompts = args.peer_prompts or (2 if args.quick else 4)
    if min(args.batches) < 1 or min(args.ks) < 1 or args.k < 1 or args.prompt_len < 2 or args.new_tokens < 1:
        raise ValueError("batches, ks, k and new tokens must be >= 1 and prompt-len >= 2")
    args.ks = tuple(sorted(set(args.ks) | {args.k}))

    pair = load_pair(args.ckpt, args.quick)
    print(f"target {pair.presets[0]}, draft {pair.presets[1]}; prompts <= {args.prompt_len} bytes, "
          f"{args.new_tokens} new tokens, {args.repeats} timed call(s) per case, backend {jax.default_backend()}")
    rows = []
    for batch in args.batches:
        batch_rows, inputs = bench_batch(pair, batch, args.ks if batch in args.sweep_batches else (args.k,), args)
        rows += batch_rows
    table = [r for r in rows if r["k"] in (0, args.k)]
    sweep = [r for r in rows if r["batch"] in args.sweep_batches]
    columns = ["batch", "method", "k", "tok_per_s", "speedup", "speedup_med", "accept_rate", "tok_per_call",
               "identical", "best_s", "median_s", "compile_s"]
    print_table(table, columns, title=f"batch sizes (k = {args.k}, ngram = {args.ngram})")
    if sweep:
        swept = sorted({r["batch"] for r in sweep})  # the sweep batches that also ran
        print_table(sweep, columns, title=f"k sweep at batch {', '.join(map(str, swept))}")
    goals = goals_of(rows, args.k)
    all_identical = all(r["identical"] for r in rows if r["k"])
    peer_rows, peer = [], f"not run: {args.peer_python} cannot import torch and transformers (see --peer-python)"
    if _has_hf(args.peer_python):
        count = min(args.peer_prompts, len(inputs[0]))
        peer_rows = hf_peer(pair, args.peer_python, *(x[:count] for x in inputs), args)
        peer = f"HF transformers generate under {args.peer_python}, batch 1, {count} prompts (first rows of batch {len(inputs[0])})"
        print_table(peer_rows, ["batch", "method", "k", "tok_per_s", "speedup", "identical", "median_s"], title=f"peer: {peer}")
    print(f"\ngoals: {json.dumps(goals, default=float)}")
    print(f"all speculative outputs identical to plain greedy: {all_identical}")
    if not peer_rows:
        print(f"HF peer: {peer}")
    write_json(args.json, {
        "pair": pair.presets, "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "batch_table": table, "k_sweep": sweep, "goals": goals, "all_identical": all_identical,
        "peer": {"note": peer, "rows": peer_rows},
    })


if __name__ == "__main__":
    main()
