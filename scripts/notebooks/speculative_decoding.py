"""Source of colab/speculative_decoding.ipynb (percent format; see scripts/make_colab.py).

Edit here, then run ``python scripts/make_colab.py --notebook speculative_decoding``. From the
repository root this file also runs as a plain script.
"""

# %% [markdown]
# # Speculative decoding with a trained draft model
#
# A small **draft** model guesses the next `k` tokens; the **target** model checks all of them
# in one call and keeps the longest prefix it agrees with (plus one token of its own). With
# greedy acceptance the output is *token for token* what greedy decoding of the target alone
# gives, in fewer target calls: `decoding.speculative_generate` runs the whole loop jit-compiled,
# batched with ragged acceptance, split over the devices of a mesh.
#
# This notebook:
#
# 1. installs this repository and finds the devices (TPU, GPU or CPU) and puts them in one mesh;
# 2. trains a byte-level target and draft on Python source code with the project's training
#    code (`scripts/train_lm.py`), or reloads them when the work folder already holds them;
# 3. checks that speculative greedy output equals `decoding.generate` greedy output;
# 4. sweeps `k` (draft tokens per round): speedup over greedy decoding and acceptance rate;
# 5. sweeps the batch size.
#
# It runs top to bottom on a fresh Colab runtime (TPU recommended: *Runtime > Change runtime
# type*) and on a plain CPU. The sizes are tiny by default; the **Scale up** cell holds every
# size knob.

# %%
# Install this repository (skipped when its packages are already importable, e.g. when this
# runs inside a clone). REPO_URL: point it at your clone or fork.
REPO_URL = "https://github.com/jax-decoding/jax-decoding"

import glob
import importlib
import importlib.util
import pathlib
import shutil
import subprocess
import sys

if not all(importlib.util.find_spec(name) for name in ("decoding", "retrieval")):
    # On a TPU (GPU) runtime, JAX's TPU (CUDA) build first: the package's requirements would
    # otherwise bring the CPU build.
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-U", "jax[tpu]"], check=True)
    elif shutil.which("nvidia-smi"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-U", "jax[cuda12]"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{REPO_URL}"], check=True)
    importlib.invalidate_caches()

# The training code and the benchmark helpers live in the repository's scripts/ folder, which
# pip does not install: use the checkout this runs in, else a shallow clone.
SCRIPTS = pathlib.Path("scripts").resolve()
if not (SCRIPTS / "train_lm.py").exists():
    if not pathlib.Path("jax-decoding").exists():
        subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, "jax-decoding"], check=True)
    SCRIPTS = pathlib.Path("jax-decoding", "scripts").resolve()
sys.path.insert(0, str(SCRIPTS))
print("scripts:", SCRIPTS)

# %% [markdown]
# ## Devices and the mesh
#
# `decoding.sharding.data_mesh()` puts every device on one `data` axis: the batch is split over
# it and the weights are replicated. On a Colab TPU you should see its TPU cores (8 on a v2-8);
# on a CPU runtime one `CpuDevice` (the test suite runs this notebook with 8 virtual CPU devices).
# Batch sizes below must be multiples of the device count.

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
# well under a minute on a 2-core CPU; at that size the models are too small and the machine too
# slow for the timings to mean much (the checks still hold). The comment gives the sizes to use
# on a TPU: the benchmark's full recipe (`scripts/bench_speculative.py`, `FULL_RECIPE`).

# %%
import os
import tempfile

import bench_speculative

# ---- Scale up ------------------------------------------------------------------------------
# On a TPU runtime use:
#   RECIPE = bench_speculative.FULL_RECIPE   # a 19.1M-parameter "medium" target, the 0.46M "draft", 1,000 steps
#   CORPUS_BYTES = None                       # the whole standard library
#   PROMPT_LEN, NEW_TOKENS = 256, 128
#   BATCH, KS, BATCHES, REPEATS = 8, (1, 2, 3, 4, 5, 6, 7, 8), (8, 32, 128), 5
#   WORKDIR = "/content/drive/MyDrive/jax-decoding/lm"   # keeps the trained pair across sessions
RECIPE = (  # (target, draft): (a models.PRESETS name, train_lm.TrainSettings fields), as in bench_speculative
    ("draft", dict(steps=60, batch=16, seq_len=64, warmup_steps=4, checkpoint_every=100)),
    ("tiny", dict(steps=60, batch=16, seq_len=64, warmup_steps=4, checkpoint_every=100)),
)
CORPUS_BYTES = 2_000_000  # bytes of the stdlib split read for training (None: all)
PROMPT_LEN, NEW_TOKENS = 32, 32  # longest prompt (bytes) and new tokens per row
BATCH = 8  # rows of the equality check and the k sweep (a multiple of the device count)
KS = (1, 2, 4)  # draft tokens per round to sweep
BATCHES = (8, 32)  # batch sizes to sweep (multiples of the device count)
REPEATS = 2  # timed calls per case (best one reported), after one warm-up call
WORKDIR = tempfile.mkdtemp(prefix="speculative-")  # trained models; reloaded when present
# ---------------------------------------------------------------------------------------------
assert all(b % data_size(mesh) == 0 for b in (BATCH, *BATCHES)), "batch sizes must split over the devices"

# %% [markdown]
# ## Train the target and the draft
#
# `train_lm.train` (the code behind `scripts/train_lm.py`) trains a byte-level Llama-family
# model on the Python standard library's source files, with orbax checkpoints: a work folder
# that already holds a finished run is reloaded instead of retrained. The draft is the smaller
# model. You should see both training losses fall from about 5.5 nats per byte (uniform over 256
# bytes) and a held-out loss close to the final training loss.

# %%
import matplotlib.pyplot as plt
import numpy as np

import train_lm
from models import Decoder, preset

corpus = train_lm.load_corpus(CORPUS_BYTES)
print(f"corpus: {corpus.train.shape[0]:,} training bytes, {corpus.heldout.shape[0]:,} held-out bytes")
trained = {}
for role, (name, fields) in zip(("target", "draft"), RECIPE):
    settings = train_lm.TrainSettings(preset=name, **fields)
    trained[role] = result = train_lm.train(settings, corpus, os.path.join(WORKDIR, role), progress=False)
    count = sum(p.size for p in jax.tree.leaves(result.params))
    if result.losses:  # trained in this session (a reloaded run has no new losses)
        print(f"{role} ({name}, {count:,} parameters): loss {result.losses[0]:.2f} -> {result.losses[-1]:.2f} "
              f"in {len(result.losses)} steps, held out {result.heldout_loss:.2f}")
        assert result.losses[-1] < result.losses[0] - 1.0, "training did not lower the loss"
    else:
        print(f"{role} ({name}, {count:,} parameters): reloaded from {WORKDIR}, held out {result.heldout_loss:.2f}")

if all(r.losses for r in trained.values()):
    fig, ax = plt.subplots(figsize=(6, 3))
    for role, result in trained.items():
        ax.plot(np.arange(1, len(result.losses) + 1), result.losses, label=f"{role} ({result.metadata['preset']})")
    ax.set(xlabel="step", ylabel="loss (nats per byte)", title="training")
    ax.legend()
    fig.tight_layout()
    plt.show()

target, draft = (Decoder(preset(name)) for name, _ in RECIPE)

# %% [markdown]
# ## Speculative greedy decoding == greedy decoding
#
# Prompts are snippets of the *held-out* standard-library files (ragged lengths). Plain greedy
# decoding (`decoding.generate(..., mesh=mesh)`) and speculative decoding with the draft
# (`decoding.speculative_generate(..., mesh=mesh)`), both with the batch split over the mesh,
# must produce the same tokens; the cell asserts it and prints one continuation (at the tiny
# defaults the models have learned little beyond byte statistics, so it is repetitive).

# %%
from _bench_common import measure_interleaved
from bench_speculative import heldout_prompts
from decoding import ModelDraft, generate, speculative_generate
from models import init_cache

target_params, draft_params = trained["target"].params, trained["draft"].params


def capacity(k):
    """Cache room per row: the longest prompt, the new tokens and one verification's k + 1."""
    return PROMPT_LEN + NEW_TOKENS + k + 1


def greedy_case(prompts, lengths):
    """(call, make_args) for measure_interleaved: plain greedy decoding; a fresh cache per call
    (it is donated), built outside the timed call."""
    call = lambda cache: generate(target, target_params, cache, prompts, lengths, max_new_tokens=NEW_TOKENS, mesh=mesh)
    return call, lambda: (init_cache(target.config, len(lengths), capacity(0)),)


def speculative_case(prompts, lengths, k):
    """(call, make_args): speculative greedy decoding with the draft model, k drafts per round."""
    call = lambda cache, draft_cache: speculative_generate(
        target, target_params, cache, prompts, lengths, draft=ModelDraft(draft, draft_params, draft_cache),
        num_draft_tokens=k, max_new_tokens=NEW_TOKENS, mesh=mesh,
    )
    rows = len(lengths)
    return call, lambda: (init_cache(target.config, rows, capacity(k)), init_cache(draft.config, rows, capacity(k)))


prompts, lengths = heldout_prompts(BATCH, PROMPT_LEN)  # int32 [BATCH, PROMPT_LEN] right-padded, [BATCH]
call, make_args = greedy_case(prompts, lengths)
plain = call(*make_args())
call, make_args = speculative_case(prompts, lengths, KS[-1])
spec = call(*make_args())
assert (spec.tokens == plain.tokens).all(), "speculative greedy output differs from greedy output"
assert (spec.lengths == NEW_TOKENS).all()
print(f"speculative (k={KS[-1]}) == greedy for all {BATCH} rows x {NEW_TOKENS} tokens")
row_prompt = prompts[0, : lengths[0]].astype(np.uint8).tobytes().decode("utf-8", "replace")
print("--- prompt (held-out code) ---\n" + row_prompt)
print("--- greedy continuation ---\n" + np.asarray(spec.tokens[0], np.uint8).tobytes().decode("utf-8", "replace"))

# %% [markdown]
# ## Speedup and acceptance per k
#
# For each `k`, the batch is decoded by plain greedy decoding and by speculative decoding; the
# calls are timed interleaved (`scripts/_bench_common.measure_interleaved`: compile excluded,
# best of `REPEATS`). **Acceptance** is the fraction of draft tokens the target kept; **tokens
# per target call** is how many tokens each target call produced (plain greedy: 1). Every
# speculative output is asserted equal to greedy's. You should see acceptance fall as `k` grows
# (a later guess is kept only if all earlier ones were) while tokens per target call grow; the
# cell asserts both from the smallest to the largest `k`. Whether fewer target calls become a wall-clock speedup depends on how much
# cheaper the draft is than the target and on the hardware: verifying `k + 1` tokens costs about
# as much as one when the target's step is memory-bound (accelerators, the TPU sizes); at the
# tiny CPU defaults it is not, and the speedups printed there say little.

# %%
cases = {"greedy": greedy_case(prompts, lengths)}
cases.update({f"k={k}": speculative_case(prompts, lengths, k) for k in KS})
measured = measure_interleaved(cases, repeats=REPEATS)
base = measured["greedy"]
sweep = []
for k in KS:
    m = measured[f"k={k}"]
    assert (m.output.tokens == base.output.tokens).all(), f"k={k}: output differs from greedy"
    acceptance = float(np.mean(m.output.stats.mean_accepted())) / k
    per_call = float(np.mean(m.output.stats.tokens_per_call(m.output.lengths)))
    assert 0.0 <= acceptance <= 1.0 and 1.0 <= per_call <= k + 1
    sweep.append({"k": k, "speedup": base.runs.min_s / m.runs.min_s, "acceptance": acceptance,
                  "tokens_per_call": per_call, "best_ms": 1e3 * m.runs.min_s, "compile_s": m.compile_s})
print(f"batch {BATCH}, greedy: {1e3 * base.runs.min_s:.1f} ms per call (compile {base.compile_s:.1f} s)")
print(f"{'k':>3} {'speedup':>8} {'acceptance':>11} {'tokens/call':>12} {'best ms':>8} {'compile s':>10}")
for r in sweep:
    print(f"{r['k']:>3} {r['speedup']:>8.2f} {r['acceptance']:>11.2f} {r['tokens_per_call']:>12.2f} "
          f"{r['best_ms']:>8.1f} {r['compile_s']:>10.1f}")
# A trained draft agrees with the target far more often than chance (1/256 for a random byte).
assert sweep[0]["acceptance"] > 0.2, "the draft barely agrees with the target: is it trained?"
assert sweep[-1]["acceptance"] <= sweep[0]["acceptance"], "acceptance did not fall with k"
assert sweep[-1]["tokens_per_call"] > sweep[0]["tokens_per_call"], "tokens per target call did not grow with k"

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
left.plot(KS, [r["speedup"] for r in sweep], "o-")
left.axhline(1.0, color="gray", lw=0.8)
left.set(xlabel="k (draft tokens per round)", ylabel="speedup over greedy", title=f"speedup, batch {BATCH}")
right.plot(KS, [r["acceptance"] for r in sweep], "o-", label="acceptance")
right.plot(KS, [r["tokens_per_call"] / (r["k"] + 1) for r in sweep], "s--", label="tokens per call / (k + 1)")
right.set(xlabel="k (draft tokens per round)", ylim=(0, 1.05), title="acceptance")
right.legend()
for ax in (left, right):
    ax.set_xticks(KS)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Batch-size sweep
#
# A larger batch gives each call more rows to work on, so tokens/s of both methods should rise
# with the batch size (asserted; every output is again asserted equal to greedy's). On an
# accelerator the target's step also stops being memory-bound sooner, so speculative decoding
# gains less per call at large batches: pick `k` per batch size. The sweep runs the `k` with the
# best speedup above (a batch size and `k` already measured are not recompiled).

# %%
best_k = max(sweep, key=lambda r: r["speedup"])["k"]
by_batch = []
for batch in BATCHES:
    batch_prompts, batch_lengths = (prompts, lengths) if batch == BATCH else heldout_prompts(batch, PROMPT_LEN)
    m = measure_interleaved({"greedy": greedy_case(batch_prompts, batch_lengths),
                             "speculative": speculative_case(batch_prompts, batch_lengths, best_k)}, repeats=REPEATS)
    assert (m["speculative"].output.tokens == m["greedy"].output.tokens).all(), f"batch {batch}: output differs"
    produced = batch * NEW_TOKENS
    by_batch.append({"batch": batch, "greedy_tok_s": produced / m["greedy"].runs.min_s,
                     "speculative_tok_s": produced / m["speculative"].runs.min_s})
print(f"k = {best_k}")
print(f"{'batch':>6} {'greedy tok/s':>13} {'speculative tok/s':>18} {'speedup':>8}")
for r in by_batch:
    print(f"{r['batch']:>6} {r['greedy_tok_s']:>13.0f} {r['speculative_tok_s']:>18.0f} "
          f"{r['speculative_tok_s'] / r['greedy_tok_s']:>8.2f}")
for method in ("greedy_tok_s", "speculative_tok_s"):
    assert by_batch[-1][method] > by_batch[0][method], f"{method}: no gain from batch {BATCHES[0]} to {BATCHES[-1]}"

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(BATCHES, [r["greedy_tok_s"] for r in by_batch], "o-", label="greedy")
ax.plot(BATCHES, [r["speculative_tok_s"] for r in by_batch], "s-", label=f"speculative, k={best_k}")
ax.set(xscale="log", xlabel="batch size", ylabel="tokens / s", title="batch-size sweep")
ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Where to go next
#
# * `scripts/bench_speculative.py` is the full benchmark (also n-gram prompt lookup, which needs
#   no draft model: `decoding.PromptLookupDraft`), with JSON output.
# * Sampling: pass `sampler=decoding.Categorical(...)` and a `key`; acceptance then uses
#   rejection sampling, and the output follows the target's distribution exactly.
# * A constraint (`constraint=` a trie or a regular expression) restricts both models' tokens.
