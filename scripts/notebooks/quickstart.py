"""Source of colab/quickstart.ipynb (percent format; see scripts/make_colab.py).

Edit here, then run ``python scripts/make_colab.py --notebook quickstart``. From the
repository root this file also runs as a plain script.
"""

# %% [markdown]
# # jax-decoding quickstart
#
# Every decoding algorithm of this library is **one jit-compiled program** (prefill plus a
# `lax.while_loop`) over a pure-functional model step
# `logits, cache = model(params, tokens, cache, num_valid)`. This notebook is a tour of the
# public API on a small Flax Llama-family model:
#
# 1. a model, its parameters and its decode cache;
# 2. greedy and sampled decoding (`decoding.generate`: per-row temperature, per-row keys, a
#    batch split over a device mesh), beam search and diverse beam search;
# 3. beam search constrained to a set of items (a trie flattened into a sparse matrix on the
#    device, STATIC-style): every output is an item;
# 4. a regular expression as a constraint: every output matches it;
# 5. speculative decoding (prompt lookup, and a draft model): the same tokens as greedy
#    decoding, in fewer target calls;
# 6. a constraint of your own: one small class, no change to the library.
#
# The model's weights are **random** (training is the subject of the other two notebooks), so
# its text is gibberish; what the cells show, and assert, is what the algorithms guarantee
# whatever the weights. It runs top to bottom on a fresh Colab runtime (TPU recommended:
# *Runtime > Change runtime type*) and on a plain CPU; the **Scale up** cell holds every size
# knob.

# %%
# Install this repository (skipped when its packages are already importable, e.g. when this
# runs inside a clone). REPO_URL: point it at your clone or fork.
REPO_URL = "https://github.com/jax-decoding/jax-decoding"

import glob
import importlib
import importlib.util
import shutil
import subprocess
import sys

if not all(importlib.util.find_spec(name) for name in ("decoding", "constraints", "models")):
    # On a TPU (GPU) runtime, JAX's TPU (CUDA) build first: the package's requirements would
    # otherwise bring the CPU build.
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-U", "jax[tpu]"], check=True)
    elif shutil.which("nvidia-smi"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-U", "jax[cuda12]"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{REPO_URL}"], check=True)
    importlib.invalidate_caches()

# %% [markdown]
# ## Devices and the mesh
#
# `decoding.sharding.data_mesh()` puts every device on one `data` axis. A call given
# `mesh=mesh` splits its batch over that axis (weights replicated) and returns the same tokens
# as an unsharded call. Every entry point takes it; below, the greedy, sampled and speculative
# calls do (a sharded program is a separate compile, and this tour keeps compiles few). On a
# Colab TPU you should see its TPU cores (8 on a v2-8); on a CPU runtime one `CpuDevice` (the
# test suite runs this notebook with 8 virtual CPU devices).

# %%
import jax

from decoding.sharding import data_mesh, data_size

print(jax.devices())
print("platform:", jax.default_backend(), "| devices:", jax.device_count())
mesh = data_mesh()
print(mesh)

# %% [markdown]
# ## Scale up
#
# **The one cell with every size knob.** The defaults are tiny so that the notebook finishes in
# seconds on a 2-core CPU; the comment gives sizes for a TPU. Every call below uses the same
# batch size, cache capacity and number of new tokens, so each algorithm compiles once (a new
# shape recompiles; a new value of a traced argument does not).

# %%
# ---- Scale up ------------------------------------------------------------------------------
# On a TPU runtime use:
#   PRESET = "medium"            # a 19.1M-parameter model (any byte-vocabulary preset: tiny, small, medium, draft)
#   BATCH, CAPACITY, NEW_TOKENS = 64, 256, 128
#   NUM_BEAMS, NUM_ITEMS, DRAFT_TOKENS = 8, 100_000, 4
PRESET = "tiny"  # a models.PRESETS name with the byte vocabulary (256 tokens; the regex cell relies on it)
BATCH = 8  # prompts per call (a multiple of the device count)
CAPACITY = 64  # cache room per row: prompt + new tokens (+ k + 1 for speculative decoding)
NEW_TOKENS = 16  # new tokens per row
NUM_BEAMS = 4  # beams per prompt (beam search, diverse beam search, constrained beam search)
NUM_ITEMS = 1000  # items of the constrained beam search (random 4-token IDs)
DRAFT_TOKENS = 4  # k: draft tokens per speculative round
# ---------------------------------------------------------------------------------------------
assert BATCH % data_size(mesh) == 0, "BATCH must split over the devices"

# %% [markdown]
# ## 1. A model
#
# `models.preset(name)` is a `LlamaConfig`; `Decoder(config)` is the decode step, a hashable
# object (a static argument of the jitted loops); `init_params` makes random parameters and
# `init_cache(config, batch, capacity)` an empty KV cache whose rows carry their own lengths.
# Prompts are right-padded token arrays with one length per row (ragged prompts are the
# normal case). The tiny presets read bytes: a token is a byte.

# %%
import jax.numpy as jnp
import numpy as np

from models import Decoder, init_cache, init_params, preset

config = preset(PRESET)
model = Decoder(config)
params = init_params(config, jax.random.key(0))
print(config)
print(f"{sum(p.size for p in jax.tree.leaves(params)):,} parameters")

TEXTS = ["Hello, world", "The cat sat on", "def main():", "2024-01-01 is",
         "Once upon", "JAX is", "x = [1, 2,", "Bonjour"]
texts = [TEXTS[i % len(TEXTS)] for i in range(BATCH)]
prompt_lengths = np.array([len(t) for t in texts], np.int32)  # int32 [BATCH], ragged
prompts = np.zeros((BATCH, prompt_lengths.max()), np.int32)  # int32 [BATCH, longest], right-padded
for row, text in enumerate(texts):
    prompts[row, : len(text)] = list(text.encode())


def cache():
    """A fresh, empty cache: generate and speculative_generate *donate* theirs (its buffers are
    reused for the output's cache), so every call gets a new one."""
    return init_cache(config, batch=BATCH, capacity=CAPACITY)


def show(out, row):
    """Row ``row``'s new tokens of a decoding output, as a Python bytes literal."""
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)  # host copies: no device op
    return repr(bytes(tokens[row, : lengths[row]].astype(np.uint8)))

# %% [markdown]
# ## 2. Greedy and sampled decoding, beam search
#
# `decoding.generate` decodes every row in one compiled loop and returns a `GenerateOutput`:
# `tokens` `[batch, max_new_tokens]` (new tokens only, `pad_id` after each row's end),
# `lengths`, `log_probs`, the `cache`, `complete` (the row stopped by itself: an EOS or a whole
# constrained output) and `nonfinite` (rows that read NaN/inf logits).

# %%
from decoding import generate

greedy = generate(model, params, cache(), prompts, prompt_lengths, max_new_tokens=NEW_TOKENS, mesh=mesh)
print(greedy.tokens.shape, greedy.lengths)
for row in range(3):
    print(f"{texts[row]!r:>18} -> {show(greedy, row)}")
assert not np.asarray(greedy.nonfinite).any()

# %% [markdown]
# **Sampling.** A sampler is `Categorical` with a chain of logit processors (`Temperature`,
# `TopK`, `TopP`, `MinP`); every knob is traced (a new value does not recompile) and may be one
# value per row: here row 0 has temperature 0, which is greedy. Randomness is per row: `key` is
# one key (row `b` uses `jax.random.split(key, batch)[b]`) or one key per row, and row `b` draws
# step `i` with `fold_in(its key, i)`. So a row's sample never depends on its batchmates or on
# how the batch is split over devices: decoded **alone**, with its own key, it comes out the
# same as in the sharded batch.

# %%
from decoding import Categorical, Temperature, TopP

temperatures = np.linspace(0.0, 1.5, BATCH).astype(np.float32)  # float32 [BATCH]: one per row
key = jax.random.key(1)
sampled = generate(model, params, cache(), prompts, prompt_lengths, max_new_tokens=NEW_TOKENS,
                   sampler=Categorical((Temperature(temperatures), TopP(0.95))), key=key, mesh=mesh)
for row in range(3):
    print(f"T={temperatures[row]:.2f} {texts[row]!r:>18} -> {show(sampled, row)}")
assert np.array_equal(np.asarray(sampled.tokens)[0], np.asarray(greedy.tokens)[0]), "temperature 0 is greedy"

row = BATCH - 1  # the same row alone: batch 1, no mesh, its own key split(key, BATCH)[row]
alone = generate(model, params, init_cache(config, batch=1, capacity=CAPACITY), prompts[row:row + 1],
                 prompt_lengths[row:row + 1], max_new_tokens=NEW_TOKENS,
                 sampler=Categorical((Temperature(temperatures[row:row + 1]), TopP(0.95))),
                 key=jax.random.split(key, BATCH)[row:row + 1])
assert np.array_equal(np.asarray(alone.tokens)[0], np.asarray(sampled.tokens)[row]), "a row depends on its batchmates"
print(f"row {row} alone == row {row} in the batch of {BATCH} on {data_size(mesh)} device(s)")

# %% [markdown]
# **Beam search** keeps the `num_beams` best partial continuations of each prompt and returns
# them ranked by log-probability (divided by `length ** length_penalty`):
# `sequences` `[batch, num_beams, max_new_tokens]`, `scores`, `log_probs`, `lengths`, `valid`.
# With `length_penalty=0.0` the ranking is by the raw sum of log-probabilities; the best beam
# usually beats greedy's sequence (the one path greedy follows), as printed. **Diverse beam
# search** splits the beams into groups and penalizes a group for each token an earlier group
# chose at the same step (a Hamming penalty), so the groups start differently: you should see
# more distinct first tokens per prompt than plain beam search gives.

# %%
from decoding import beam_search, diverse_beam_search

beams = beam_search(model, params, cache(), prompts, prompt_lengths, num_beams=NUM_BEAMS,
                    max_new_tokens=NEW_TOKENS, length_penalty=0.0)
print(beams.sequences.shape, "(batch, beams, new tokens)")
print("best beam log-prob:", np.round(np.asarray(beams.log_probs)[:, 0], 2))
print("greedy log-prob:   ", np.round(np.asarray(greedy.log_probs).sum(axis=1), 2))
assert np.asarray(beams.valid).all() and (np.diff(np.asarray(beams.scores), axis=1) <= 0).all()  # best first

diverse = diverse_beam_search(model, params, cache(), prompts, prompt_lengths, num_beams=NUM_BEAMS,
                              num_groups=2, diversity_strength=10.0, max_new_tokens=NEW_TOKENS,
                              length_penalty=0.0)
first = lambda out: [len(set(row)) for row in np.asarray(out.sequences)[:, :, 0].tolist()]
print("distinct first tokens per prompt: beam search", first(beams), "| diverse", first(diverse))
assert all(n >= 2 for n in first(diverse)), "the two groups should start with different tokens"

# %% [markdown]
# ## 3. Constrained beam search over a set of items
#
# Generative retrieval decodes an item's ID (a few tokens, e.g. a semantic ID) and must only
# produce IDs that exist. `constraints.build_fixed_length_index` turns the allowed items into a
# trie stored as a sparse (CSR) transition matrix, STATIC-style: each decode step is a few
# gathers on the device, no host round trip. Passed as `constraint=`, it makes beam search rank
# only the allowed continuations; each returned beam is an item, ranked by the model's exact
# log-probability. (A random 4-byte sequence is one of these items with probability
# `NUM_ITEMS / 256**4`.)

# %%
from constraints import build_fixed_length_index

rng = np.random.default_rng(0)
items = rng.integers(0, config.vocab_size, size=(NUM_ITEMS, 4))  # int [NUM_ITEMS, 4]: any order, duplicates ok
index = build_fixed_length_index(items, vocab_size=config.vocab_size)
print(f"trie: {len(np.unique(items, axis=0))} items of {index.depth} tokens")

top = beam_search(model, params, cache(), prompts, prompt_lengths, num_beams=NUM_BEAMS, constraint=index)
print(top.sequences.shape, "(batch, beams, item tokens): the top items per prompt, best first")
allowed = {tuple(item) for item in items.tolist()}
assert np.asarray(top.valid).all()
assert all(tuple(seq) in allowed for seq in np.asarray(top.sequences).reshape(-1, 4).tolist())
print("prompt 0's top items:", np.asarray(top.sequences)[0].tolist())

# %% [markdown]
# ## 4. A regular expression as a constraint
#
# `constraints.compile_regex(pattern, token_strings, eos_id)` compiles a regular expression
# over the model's vocabulary (each token id's string; here one byte each, and token 255 as
# EOS) into a token-level automaton, `constraints.TokenDFA`. Any entry point takes it as
# `constraint=`: every step only allows tokens that keep the text a prefix of some match, and
# EOS only where a match is complete. A date pattern is bounded (at most 10 characters + EOS),
# so its `depth`, the default `max_new_tokens`, lets every row finish: all outputs are
# complete and match. Beam search under the same constraint returns the most likely matching
# strings.

# %%
import re

from constraints import compile_regex

DATE = r"20\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
strings = [chr(i) for i in range(255)] + [""]  # the byte vocabulary's strings; 255 = EOS
date = compile_regex(DATE, strings, eos_id=255)
print("depth:", date.depth)

dated = generate(model, params, cache(), prompts, prompt_lengths, constraint=date)
texts_of = lambda tokens, lengths: ["".join(strings[t] for t in row[:n]) for row, n in zip(tokens, lengths)]
dates = texts_of(dated.tokens.tolist(), dated.lengths.tolist())
print("generate:   ", dates)
assert np.asarray(dated.complete).all() and all(re.fullmatch(DATE, d) for d in dates)

date_beams = beam_search(model, params, cache(), prompts, prompt_lengths, num_beams=NUM_BEAMS,
                         constraint=date)
valid = np.asarray(date_beams.valid)
best = texts_of(np.asarray(date_beams.sequences)[:, 0].tolist(), np.asarray(date_beams.lengths)[:, 0].tolist())
print("beam search:", best)
all_beams = texts_of(np.asarray(date_beams.sequences)[valid].tolist(), np.asarray(date_beams.lengths)[valid].tolist())
assert valid[:, 0].all() and all(re.fullmatch(DATE, d) for d in all_beams)

# %% [markdown]
# ## 5. Speculative decoding
#
# A cheap **draft** proposes `k` tokens; the target checks them all in one call and keeps the
# longest prefix it agrees with, plus one token of its own. With greedy acceptance the output
# is token for token greedy decoding's, asserted below against the greedy batch of section 2.
# `out.stats.mean_accepted()` is the number of drafts kept per round, per row (at most `k`), and
# `out.stats.tokens_per_call(out.lengths)` the tokens each target call produced (plain decoding: 1).
#
# * `PromptLookupDraft(ngram)` needs no model: it copies what followed the last earlier
#   occurrence of the context's final n-gram (it pays off on repetitive text: code edits,
#   quotes, this random model's loops).
# * `ModelDraft(model, params, cache)` runs a draft model (with its own cache). Here, for want
#   of a trained small model, the draft is the target's first layer alone (self-speculation,
#   as in LayerSkip): a 1-layer model sharing the target's embedding and head, which agrees
#   with the target often but not always. The speculative-decoding notebook trains a real pair.
#
# Both caches need room for prompt + new tokens + `k` + 1 per row.

# %%
from decoding import ModelDraft, PromptLookupDraft, speculative_generate

lookup = speculative_generate(model, params, cache(), prompts, prompt_lengths,
                              draft=PromptLookupDraft(ngram=2, vocab_size=config.vocab_size),
                              num_draft_tokens=DRAFT_TOKENS, max_new_tokens=NEW_TOKENS, mesh=mesh)
assert np.array_equal(lookup.tokens, greedy.tokens), "speculative greedy output differs from greedy output"
print("prompt lookup: drafts kept per round", np.round(np.asarray(lookup.stats.mean_accepted()), 2),
      "| tokens per target call", np.round(np.asarray(lookup.stats.tokens_per_call(lookup.lengths)), 2))

# The draft: the target's first layer alone (embedding, first block, final norm, head), as in
# LayerSkip-style self-speculation; in practice, a small model trained on the same data.
draft_config = preset(PRESET, n_layers=1)
draft_params = {name: p for name, p in params.items() if not name.startswith("layers_") or name == "layers_0"}
drafted = speculative_generate(model, params, cache(), prompts, prompt_lengths,
                               draft=ModelDraft(Decoder(draft_config), draft_params,
                                                init_cache(draft_config, batch=BATCH, capacity=CAPACITY)),
                               num_draft_tokens=DRAFT_TOKENS, max_new_tokens=NEW_TOKENS, mesh=mesh)
assert np.array_equal(drafted.tokens, greedy.tokens), "speculative greedy output differs from greedy output"
print("draft model:   drafts kept per round", np.round(np.asarray(drafted.stats.mean_accepted()), 2),
      "| tokens per target call", np.round(np.asarray(drafted.stats.tokens_per_call(drafted.lengths)), 2))

# %% [markdown]
# ## 6. A constraint of your own
#
# Decoding knows a constraint only through a small protocol (`constraints.protocol`): a state
# pytree with a leading batch shape, `initial_state(shape)`, `allowed_mask(state)` (bool
# `[..., vocab]`), `advance(state, token)`, `is_complete(state)`, and static metadata `depth`
# (the default number of new tokens), `fixed_length`, `eos_id`, `vocab_size`. Any class with
# those members is a constraint: no edit in `decoding/`. This one allows exactly `depth`
# printable ASCII bytes in which no byte follows itself; its state is a pair of arrays (the
# previous token, the count so far). Greedy decoding under it is still one compiled loop.

# %%
from flax import struct

from decoding import Constraint


@struct.dataclass
class PrintableNoRepeat:
    """Exactly ``depth`` printable ASCII tokens (32-126), no token twice in a row."""

    vocab_size: int = struct.field(pytree_node=False)
    depth: int = struct.field(pytree_node=False)
    fixed_length: bool = struct.field(pytree_node=False, default=True)
    eos_id: None = struct.field(pytree_node=False, default=None)

    def initial_state(self, shape):  # (previous token, count): int32 [*shape] each
        return jnp.full(shape, -1, jnp.int32), jnp.zeros(shape, jnp.int32)

    def allowed_mask(self, state):  # bool [*shape, vocab]
        previous, count = state
        tokens = jnp.arange(self.vocab_size, dtype=jnp.int32)
        printable = (tokens >= 32) & (tokens <= 126)
        return printable & (tokens != previous[..., None]) & (count < self.depth)[..., None]

    def advance(self, state, token):
        return jnp.asarray(token, jnp.int32), state[1] + 1

    def is_complete(self, state):
        return state[1] >= self.depth


custom = PrintableNoRepeat(vocab_size=config.vocab_size, depth=NEW_TOKENS)
assert isinstance(custom, Constraint)  # the protocol is a runtime-checkable typing.Protocol
clean = generate(model, params, cache(), prompts, prompt_lengths, constraint=custom)
for row in range(3):
    print(f"{texts[row]!r:>18} -> {show(clean, row)}")
ok = lambda seq: all(32 <= t <= 126 for t in seq) and all(a != b for a, b in zip(seq, seq[1:]))
assert np.asarray(clean.complete).all() and all(ok(seq) for seq in np.asarray(clean.tokens).tolist())
violations = sum(not ok(seq) for seq in np.asarray(greedy.tokens).tolist())
print(f"unconstrained greedy breaks the rule in {violations} of {BATCH} rows; constrained: 0")

# %% [markdown]
# ## Where to go next
#
# * `colab/speculative_decoding.ipynb`: train a target and a draft, then measure speedup and
#   acceptance per `k` and per batch size.
# * `colab/generative_retrieval.ipynb`: semantic IDs, a trained retriever and the batch job
#   (constrained beam search with per-query filters), with recall tables.
# * Trained weights: `models.restore_params` (orbax) or `models.load_hf_checkpoint` (Llama,
#   Qwen2, Mistral `safetensors` directories); `scripts/train_lm.py` trains a byte-level pair.
# * Inside your own `jax.jit`: each entry point's docstring names its traceable core (e.g.
#   `generate_core` in `decoding/generate.py`, with inputs from `decoding.prepare`).
