"""Decodes a few prompts greedily and with sampling, then retrieves items by constrained beam search.

The retrieval part is a preview of the generative-retrieval job on built-in data: the catalogue
is the names of the Python standard library's modules (``sys.stdlib_module_names``), each a
byte sequence ending in a newline (the EOS), compiled into a trie index; constrained beam search
returns the top names after prompts like ``"import "``, and every one is checked to be in the
catalogue.

Random weights by default (the text is then noise, but the whole path runs: bucketing,
ragged prefill, the compiled loop, per-row stopping). Give ``--params DIR`` for real text:
either a ``scripts/train_lm.py`` output folder (its ``metadata.json`` names the preset, its
``params/`` holds the weights) or an Orbax params folder saved by ``models.save_params`` for
``--preset``.

    python scripts/demo_decode.py
    python scripts/demo_decode.py --params runs/lm/target --max-new-tokens 96

Byte-level presets (vocab 256) encode prompts as UTF-8 and print the decoded bytes
(``errors="replace"``); other vocabularies print token ids.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from constraints import build_variable_length_index
from decoding import Categorical, Greedy, Temperature, TopP, beam_search, generate
from models import Decoder, init_cache, init_params, preset, restore_params

PROMPTS = ("def fibonacci(n):\n    ", "import os\nimport sys\n\n", "class Stack:\n    def push(self, item):")
BYTE_VOCAB = 256
RETRIEVAL_PROMPTS = ("import ", "from ", "# parse the command line\nimport ")
ITEM_END = "\n"  # module names never contain a newline: it ends each catalogue item (the EOS)


def load_model(preset_name: str, params_dir: str | None, seed: int) -> tuple[Decoder, dict, str]:
    """The model and its params: restored from ``params_dir`` if given, else random."""
    if params_dir is not None:
        metadata = os.path.join(params_dir, "metadata.json")
        if os.path.exists(metadata):
            with open(metadata) as f:
                preset_name = json.load(f)["preset"]
            params_dir = os.path.join(params_dir, "params")
    config = preset(preset_name)
    if params_dir is None:
        return Decoder(config), init_params(config, jax.random.key(seed)), f"{preset_name} (random weights)"
    like = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    return Decoder(config), restore_params(params_dir, like=like), f"{preset_name} ({params_dir})"


def encode(texts: tuple[str, ...], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 [batch, P] right-padded prompts and int32 [batch] lengths (bytes, or ids mod vocab)."""
    rows = [list(text.encode("utf-8")) for text in texts]
    if vocab_size < BYTE_VOCAB:
        rows = [[token % vocab_size for token in row] for row in rows]
    lengths = np.array([len(row) for row in rows], np.int32)
    prompts = np.zeros((len(rows), lengths.max()), np.int32)
    for i, row in enumerate(rows):
        prompts[i, : len(row)] = row
    return prompts, lengths


def show(tokens: np.ndarray, vocab_size: int) -> str:
    """The tokens as text for a byte vocabulary, else as an id list."""
    if vocab_size == BYTE_VOCAB:
        return repr(bytes(int(t) for t in tokens).decode("utf-8", errors="replace"))
    return str(tokens.tolist())


def run(model, params, prompts, lengths, args, sampler, key):
    """Two calls (the first compiles); returns the output and both wall times."""
    seconds = []
    for _ in range(2):
        cache = init_cache(model.config, len(lengths), int(lengths.max()) + args.max_new_tokens)
        jax.block_until_ready(cache)
        start = time.perf_counter()
        out = jax.block_until_ready(
            generate(model, params, cache, prompts, lengths, max_new_tokens=args.max_new_tokens, sampler=sampler,
                     key=key, eos_ids=args.eos_ids, vocab_size=model.config.vocab_size)
        )
        seconds.append(time.perf_counter() - start)
    return out, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", help="model preset (ignored if --params has metadata.json)")
    parser.add_argument("--params", default=None, help="train_lm.py output folder or an Orbax params folder")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per prompt (default 64)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature, finite and >= 0 (default 0.8)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus mass in [0, 1] (default 0.95)")
    parser.add_argument("--eos-ids", type=int, nargs="*", default=[], help="stop token ids (none by default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and of sampling (default 0)")
    parser.add_argument("--num-beams", type=int, default=5, help="items retrieved per prompt")
    args = parser.parse_args(argv)
    args.eos_ids = tuple(args.eos_ids)
    if args.max_new_tokens < 1 or args.num_beams < 1:
        parser.error("--max-new-tokens and --num-beams must be >= 1")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        parser.error(f"--temperature must be finite and >= 0, got {args.temperature}")
    if not 0 <= args.top_p <= 1:
        parser.error(f"--top-p must be in [0, 1], got {args.top_p}")
    if args.params is not None and not os.path.isdir(args.params):
        parser.error(f"--params {args.params}: no such folder")

    model, params, description = load_model(args.preset, args.params, args.seed)
    vocab_size = model.config.vocab_size
    prompts, lengths = encode(PROMPTS, vocab_size)
    print(f"model: {description}; backend {jax.default_backend()}; {len(PROMPTS)} prompts, "
          f"lengths {lengths.tolist()}, {args.max_new_tokens} new tokens each")

    samplers = [
        ("greedy", Greedy(), None),
        (f"sampled T={args.temperature} top-p={args.top_p}",
         Categorical((Temperature(jnp.float32(args.temperature)), TopP(jnp.float32(args.top_p)))),
         jax.random.key(args.seed)),
    ]
    for name, sampler, key in samplers:
        out, (first_s, warm_s) = run(model, params, prompts, lengths, args, sampler, key)
        _refuse_nonfinite(name, out.nonfinite)
        new_tokens = int(np.asarray(out.lengths).sum())
        print(f"\n== {name}: first call {first_s:.2f} s (includes compile), warm call {warm_s * 1e3:.1f} ms, "
              f"{new_tokens / warm_s:.0f} new tokens/s")
        for row, text in enumerate(PROMPTS):
            n = int(out.lengths[row])
            mean_log_p = float(np.asarray(out.log_probs[row, :n]).mean())
            print(f"[{row}] {show(prompts[row, : lengths[row]], vocab_size)} -> "
                  f"{show(np.asarray(out.tokens[row, :n]), vocab_size)}  (mean log p {mean_log_p:.2f})")
    if vocab_size == BYTE_VOCAB:
        retrieve(model, params, args)


def _refuse_nonfinite(what: str, nonfinite) -> None:
    """Stops with an error naming the rows that read non-finite logits (their output is noise)."""
    rows = np.flatnonzero(np.asarray(nonfinite)).tolist()
    if rows:
        raise SystemExit(f"{what}: rows {rows} read non-finite logits (NaN or inf in the params?); their output is meaningless")


def retrieve(model, params, args) -> None:
    """Top ``args.num_beams`` stdlib module names after each retrieval prompt (byte vocab only)."""
    names = sorted(sys.stdlib_module_names)
    eos_id = ord(ITEM_END)
    start = time.perf_counter()
    index = build_variable_length_index([list((n + ITEM_END).encode()) for n in names], BYTE_VOCAB, eos_id)
    build_s = time.perf_counter() - start
    prompts, lengths = encode(RETRIEVAL_PROMPTS, BYTE_VOCAB)
    seconds = []
    for _ in range(2):  # the first call compiles
        cache = init_cache(model.config, len(lengths), int(lengths.max()) + index.depth)
        start = time.perf_counter()
        out = jax.block_until_ready(
            beam_search(model, params, cache, prompts, lengths, num_beams=args.num_beams, constraint=index)
        )
        seconds.append(time.perf_counter() - start)
    _refuse_nonfinite("retrieval", out.nonfinite)
    print(f"\n== retrieval: {len(names)} stdlib module names as a trie (depth {index.depth}, built in "
          f"{build_s * 1e3:.0f} ms); constrained beam search, {args.num_beams} beams: first call "
          f"{seconds[0]:.2f} s (includes compile), warm call {seconds[1] * 1e3:.1f} ms")
    catalogue = set(names)
    for row, text in enumerate(RETRIEVAL_PROMPTS):
        found = []
        for beam in range(args.num_beams):
            if not bool(out.valid[row, beam]):
                continue
            n = int(out.lengths[row, beam])
            name = bytes(int(t) for t in out.sequences[row, beam, : n - 1]).decode()
            if name not in catalogue:
                raise AssertionError(f"constrained beam search left the catalogue: {name!r}")
            found.append(f"{name} ({float(out.scores[row, beam]):.2f})")
        print(f"[{row}] {text!r} -> {', '.join(found)}")
    print("every retrieved name is in the catalogue")


if __name__ == "__main__":
    main()
