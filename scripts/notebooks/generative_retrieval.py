"""Source of colab/generative_retrieval.ipynb (percent format; see scripts/make_colab.py).

Edit here, then run ``python scripts/make_colab.py --notebook generative_retrieval``. From the
repository root this file also runs as a plain script.
"""

# %% [markdown]
# # Generative retrieval end to end
#
# Items get **semantic IDs**: a few tokens from residual k-means over item embeddings, plus a
# collision code that makes every ID unique (as in TIGER). A small decoder reads a user's
# history (the IDs of the items they interacted with) and generates the next item's ID by
# **beam search constrained to the catalog**: a trie of the allowed IDs, flattened into a sparse
# matrix on the device (STATIC-style), so every beam is a real item and per-query filters
# (the user's own history, a segment) cost no host round trip.
#
# This notebook runs the project's retrieval library (`retrieval/`) end to end:
#
# 1. data: the built-in synthetic data set, or MovieLens-100K (`DATASET` in the Scale up cell;
#    it ships with `recbole`: `pip install --no-deps recbole==1.2.1`);
# 2. semantic IDs, with their codebook usage plotted;
# 3. training the retriever, with its loss curve;
# 4. the batch job (`retrieval.job.run_job`): top-K items for every test user, sharded over the
#    devices, written as Parquet shards, resumable;
# 5. the recall table: constrained vs unconstrained beam search vs exact scoring of every item,
#    and two baselines; cold start (items never seen in training);
# 6. what the constraint costs: constrained vs unconstrained decoding speed (and, on request, the
#    retrieval benchmark).
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

# The benchmark harness lives in the repository's scripts/ folder, which pip does not install:
# use the checkout this runs in, else a shallow clone.
SCRIPTS = pathlib.Path("scripts").resolve()
if not (SCRIPTS / "bench_retrieval.py").exists():
    if not pathlib.Path("jax-decoding").exists():
        subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, "jax-decoding"], check=True)
    SCRIPTS = pathlib.Path("jax-decoding", "scripts").resolve()
sys.path.insert(0, str(SCRIPTS))
print("scripts:", SCRIPTS)

# %% [markdown]
# ## Devices and the mesh
#
# `decoding.sharding.data_mesh()` puts every device on one `data` axis; the batch job splits
# each batch of queries over it. On a Colab TPU you should see its TPU cores (8 on a v2-8); on a
# CPU runtime one `CpuDevice` (the test suite runs this notebook with 8 virtual CPU devices).

# %%
import jax

from decoding.sharding import data_mesh

print(jax.devices())
print("platform:", jax.default_backend(), "| devices:", jax.device_count())
mesh = data_mesh()
print(mesh)

# %% [markdown]
# ## Scale up
#
# **The one cell with every size knob.** The defaults are tiny so that the notebook finishes in
# well under a minute on a 2-core CPU; the comments give the sizes to use on a TPU (the recipes
# in `retrieval/recipes.py`, which produced the README's tables, and the benchmark's grid).

# %%
import dataclasses
import tempfile

from retrieval import recipes
from retrieval.evaluate import EvalSettings
from retrieval.job import JobSettings
from retrieval.movielens import movielens_100k_dir

# ---- Scale up ------------------------------------------------------------------------------
# On a TPU runtime use:
#   DATASET = "movielens-100k" if ML100K else "synthetic"
#   DATA = recipes.data_recipe(DATASET)             # synthetic: 2,000 users, 1,000 items, 32 x 32 x 32 IDs
#   TRAIN = recipes.training_recipe(DATASET)        # 600 steps (MovieLens-100K: 2,000), batch 64
#   JOB = JobSettings(k=20, num_beams=20, batch_size=256)
#   EVAL = EvalSettings(num_beams=20, ks=(5, 10, 20), batch_size=256)
#   BENCH_ARGS = ["--catalogs", "1e5,1e6", "--batches", "64,256", "--beams", "10,50,200", "--skip-nvidia"]
#   REPEATS = 3
#   WORKDIR = "/content/drive/MyDrive/jax-decoding/retrieval"   # keeps the trained model across sessions
ML100K = movielens_100k_dir() is not None  # MovieLens-100K ships with recbole: pip install --no-deps recbole==1.2.1
DATASET = "synthetic"  # or "movielens-100k" when ML100K
DATA = dataclasses.replace(
    recipes.data_recipe(DATASET),
    synthetic_users=300, synthetic_items=200,  # the synthetic data set's size
    levels=3, codebook_size=8, max_history=10, cold_fraction=0.1,
)
TRAIN = dataclasses.replace(
    recipes.training_recipe(DATASET, steps=150), batch=32, warmup_steps=10, eval_users=100, eval_beams=10,
)
JOB = JobSettings(k=10, num_beams=10, batch_size=64, shard_rows=128)  # top-K per query, beams, queries per call
EVAL = EvalSettings(num_beams=10, ks=(5, 10), batch_size=64)  # ks <= JOB.k: the job's output is scored
REPEATS = 1  # timed calls per method in the last section (best one reported), after a warm-up call
BENCH_ARGS = None  # arguments of scripts/bench_retrieval.py to run it in the last section, e.g. ["--quick"]
BENCH_JSON = None  # or a file that benchmark wrote (--json PATH) to plot
WORKDIR = tempfile.mkdtemp(prefix="retrieval-")  # model, queries, job output; a trained model is reused
# ---------------------------------------------------------------------------------------------

# %% [markdown]
# ## Data and semantic IDs
#
# `retrieval.pipeline.prepare` filters the interactions to a 5-core, splits each user's
# history chronologically (leave one out: the last item is the test target, the one before it
# the validation target), holds a fraction of the items out of training entirely (**cold**
# items) and builds the semantic IDs from the item embeddings. The plot shows how many items
# fall on each code of each k-means level: a level that uses most of its codebook evenly spreads
# the items well (the cell asserts that every level uses at least half of it). The last ID token
# is the collision code that makes IDs unique (asserted); `collision_rate` is the fraction of
# items that needed it, i.e. share their k-means codes with another item (high at the tiny
# default, where 200 items in a few clusters meet 8 x 8 x 8 codes).

# %%
import matplotlib.pyplot as plt
import numpy as np

from retrieval.pipeline import load_tables, prepare, summary

print(f"data set: {DATASET} (MovieLens-100K {'available' if ML100K else 'not installed'})")
prepared = prepare(*load_tables(DATA), DATA)
catalog, split = prepared.catalog, prepared.split
for name, value in summary(prepared).items():
    print(f"{name:>16}: {value}")
assert len(np.unique(catalog.codes, axis=0)) == catalog.num_items, "semantic IDs must be unique"

stats = prepared.code_stats
fig, axes = plt.subplots(1, DATA.levels, figsize=(4 * DATA.levels, 2.8), squeeze=False)
for level, ax in enumerate(axes[0]):
    counts = np.bincount(catalog.codes[:, level], minlength=DATA.codebook_size)
    ax.bar(np.arange(DATA.codebook_size), counts)
    ax.set(xlabel="code", ylabel="items" if level == 0 else None,
           title=f"level {level}: usage {stats.usage[level]:.0%}, perplexity {stats.perplexity[level]:.1f}")
fig.suptitle(f"codebook usage ({catalog.num_items} items; collision code up to {stats.max_collisions})")
fig.tight_layout()
plt.show()
assert min(stats.usage) >= 0.5, "a k-means level uses less than half of its codebook"

# %% [markdown]
# ## Training
#
# `retrieval.training.train_retriever` trains a small Llama-family decoder (from `models/`) on
# history -> next item's ID tokens, with orbax checkpoints (a rerun resumes; a finished run is
# reused). Every `eval_every` steps it measures Recall@10 of constrained beam search on the
# validation users and keeps the best parameters. You should see the loss fall steeply and then
# flatten; the cell asserts that it fell.

# %%
import os

from retrieval.training import train_retriever

model_dir = os.path.join(WORKDIR, "model")
trained = train_retriever(split.train, split.valid, catalog, model_dir, TRAIN, max_history=DATA.max_history,
                          progress=False)
retriever, log = trained.retriever, trained.log
losses = np.asarray(log["losses"])
print(f"{len(losses)} steps in {log['seconds']:.1f} s; loss {losses[:10].mean():.3f} (first 10 steps) -> "
      f"{losses[-10:].mean():.3f} (last 10)")
print("validation:", log["evals"], "| selected:", log["best"])
assert losses[-10:].mean() < losses[:10].mean(), "training did not lower the loss"

fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.8, label="training loss")
ax.set(xlabel="step", ylabel="loss (nats per ID token)", title="training the retriever")
right = ax.twinx()
right.plot([e["step"] for e in log["evals"]], [e["valid_recall@10"] for e in log["evals"]], "o", color="C1",
           label="validation Recall@10")
right.set(ylabel="validation Recall@10", ylim=(0, 1))
fig.legend(loc="center right", bbox_to_anchor=(0.85, 0.6))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The batch job
#
# The test users' histories are written as Parquet query shards; `retrieval.job.run_job`
# decodes the top `k` allowed items of every query by constrained beam search, each batch split
# over the mesh, never returning an item of the query's own history, and writes output shards
# (`user_id, rank, item_id, score, semantic_id`) plus a manifest. A shard is written under a
# temporary name and renamed, so a rerun skips finished shards: the second call below writes
# nothing. The cell asserts that every query got `k` valid results.

# %%
from retrieval.end_to_end import write_queries
from retrieval.job import read_results, run_job

test = split.test
queries_dir, output_dir = os.path.join(WORKDIR, "queries"), os.path.join(WORKDIR, "output")
write_queries(test, catalog, queries_dir, shards=2)
job = run_job(model_dir, queries_dir, output_dir, JOB, retriever=retriever, mesh=mesh, progress=False)
print(job.as_dict())
assert job.invalid_outputs == 0 and job.short_queries == 0

results = read_results(output_dir)
assert results.num_rows == len(test) * JOB.k
for row in results.slice(0, 3).to_pylist():
    print(row)
again = run_job(model_dir, queries_dir, output_dir, JOB, retriever=retriever, mesh=mesh, progress=False)
print(f"rerun: {again.skipped_shards} shards already done, {again.written_shards} written")
assert again.written_shards == 0 and again.skipped_shards == job.written_shards + job.skipped_shards

# %% [markdown]
# ## Recall: constrained vs unconstrained vs exact scoring
#
# `retrieval.evaluate.evaluate` scores the job's output (the **constrained beam** row) against
# the held-out test items, and runs on the same users: **unconstrained** beam search (IDs mapped
# back to items; a generated ID that names no item is a wasted beam, the notes give the rate),
# **exact scoring** of every catalog item (the model's ranking without beam-search pruning: the
# ceiling of beam search), the **most popular** items and **co-occurrence** (the item that most
# often followed the user's last item). You should see constrained beam search well above the
# popularity baseline and within a few points of exact scoring (both asserted).

# %%
from IPython.display import Markdown, display

from retrieval.end_to_end import ranked_from_output
from retrieval.evaluate import evaluate, format_table

ranked = ranked_from_output(results, catalog, test.user_ids, max(EVAL.ks))
table = evaluate(retriever, test, split.train, prepared.cold_items, EVAL, constrained_items=ranked)
display(Markdown(format_table(table, f"{DATASET}, {TRAIN.steps} training steps")))
rows = table["rows"]
k = max(EVAL.ks)
assert rows["constrained beam"][f"recall@{k}"] > rows["most popular"][f"recall@{k}"]
assert rows["constrained beam"][f"recall@{k}"] >= rows["exact scoring"][f"recall@{k}"] - 0.05

fig, ax = plt.subplots(figsize=(6, 2.8))
ax.barh(list(rows)[::-1], [r[f"recall@{k}"] for r in rows.values()][::-1])
ax.set(xlabel=f"Recall@{k}", title=f"test Recall@{k} ({len(test)} users)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Cold start
#
# The cold items never appeared in training, so the model rarely generates their IDs unprompted.
# Their IDs come from their content embeddings, though, so they share prefixes with similar
# warm items; constraining the beam search to the cold items (an allowed-item subset, here a
# trie over the cold items' IDs) lets the model rank them anyway. The cell asserts that
# constrained decoding finds the test targets that are cold items more often than unconstrained
# decoding does.

# %%
cold = table["cold_start"]
print(cold)
assert cold, "no test target is a cold item: raise DATA.cold_fraction"
kc = cold["k"]
assert cold["cold_items"] > kc, "fewer cold items than results: the recall would be trivially 1"
assert cold[f"constrained_to_cold recall@{kc}"] > cold[f"unconstrained recall@{kc}"]

# %% [markdown]
# ## What the constraint costs
#
# One device batch of the test queries decoded three ways on one device, timed interleaved
# (`scripts/_bench_common.measure_interleaved`: the first call, which may compile, apart; best
# of `REPEATS`): **constrained** beam search (`retrieval.search.constrained_top_k`, the job's
# search: the trie's sparse candidates and the per-query history filter on the device),
# **unconstrained** beam search (`unconstrained_top_k`: IDs mapped back to items and history
# items dropped on the host, after the search) and **exact scoring** of every catalog item.
# At this size on a CPU the model's own steps dominate both beam searches, so their ratio says
# little about large catalogs; exact scoring feeds every item's ID through the model for every
# query, so its cost grows with the catalog.
#
# The retrieval benchmark, `scripts/bench_retrieval.py`, measures the decode on catalogs of up
# to a million 4 x 256-code IDs, adds a host-side trie (the `prefix_allowed_tokens_fn`
# pattern) and a per-beam KV cache, and checks its outputs. Set `BENCH_ARGS` (e.g.
# `["--quick"]`, under a minute on a CPU) to run it here, or `BENCH_JSON` to a file it wrote
# (`--json PATH`): its settings join the plot and its output checks are asserted. The README's
# tables give its figures.

# %%
import contextlib
import io
import json

from _bench_common import measure_interleaved
from retrieval.exact import exact_log_probs
from retrieval.search import AllowedItems, constrained_top_k, unconstrained_top_k

allowed = AllowedItems.build(catalog)
history = test.history[: EVAL.batch_size]  # one batch of test queries
search = dict(k=JOB.k, num_beams=JOB.num_beams, exclude=history, batch_size=EVAL.batch_size)
cases = {
    "constrained + history filter": (lambda: constrained_top_k(retriever, allowed, history, **search), tuple),
    "unconstrained": (lambda: unconstrained_top_k(retriever, history, **search), tuple),
    "exact scoring": (lambda: exact_log_probs(retriever, history), tuple),
}
timed = measure_interleaved(cases, repeats=REPEATS)
label = f"this notebook\n{catalog.num_items} items\n{len(history)} x {JOB.num_beams} beams"
settings = {label: {name: len(history) / m.runs.min_s for name, m in timed.items()}}
for name, m in timed.items():
    print(f"{name:>20}: {len(history) / m.runs.min_s:8.0f} queries/s (compile in this cell: {m.compile_s:.2f} s)")
free = timed["unconstrained"].output
print(f"unconstrained beam search: {free.invalid.sum()} of {len(history) * JOB.num_beams} beams named no item")
assert (timed["constrained + history filter"].output.items >= 0).all(), "constrained search returned fewer than k items"

bench = None
if BENCH_JSON:
    with open(BENCH_JSON) as f:
        bench = json.load(f)
elif BENCH_ARGS:
    import bench_retrieval

    with contextlib.redirect_stdout(io.StringIO()) as bench_log:  # its wide tables: print(bench_log.getvalue())
        bench = bench_retrieval.main(BENCH_ARGS)
for row in (bench or {}).get("rows", []):
    if not row.get("status", "").startswith("ok"):
        continue
    for method in ("constrained (trie)", "constrained + history filter"):
        assert row[method]["valid_items"] == 1.0, f"{method} returned a non-item"
    assert row["constrained + history filter"]["history_hits"] == 0
    assert row.get("host_trie_matches", True), "host trie and sparse path disagree"
    methods = [m for m in row if isinstance(row[m], dict) and "qps" in row[m]]
    settings[f"benchmark\n{row['items']:g} items\n{row['batch']} x {row['beams']} beams"] = {
        m: row[m]["qps"] for m in methods}

names = list(dict.fromkeys(m for qps in settings.values() for m in qps))
width = 0.8 / len(names)
fig, ax = plt.subplots(figsize=(max(6.0, 1.7 * len(settings)), 3.8))
for i, name in enumerate(names):
    ax.bar(np.arange(len(settings)) + i * width, [qps.get(name, 0) for qps in settings.values()], width, label=name)
ax.set_xticks(np.arange(len(settings)) + 0.4 - width / 2, list(settings), fontsize=7)
ax.set(ylabel="queries / s", yscale="log", title="decode speed by method (best of repeats)")
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
fig.tight_layout()
plt.show()
