"""Trains a byte-level language model (a speculative target or draft) on Python stdlib source.

The corpus exists on every machine: the ``*.py`` files of the running Python's standard
library (``sysconfig.get_paths()["stdlib"]``, without ``site-packages`` and test folders),
read as raw bytes (vocab 256), in sorted path order. A fixed split holds out every file whose
CRC32 of its relative path is 0 mod 20; those held-out files supply the evaluation loss and
the benchmark prompts. The batch of step ``s`` depends only on ``(seed, s)``, so a resumed
run sees exactly the batches an uninterrupted one would.

Usage::

    python scripts/train_lm.py --preset small --steps 400 --out runs/lm/target
    python scripts/train_lm.py --both --steps 400 --out runs/lm   # OUT/target and OUT/draft

Each OUT holds ``checkpoints/`` (orbax CheckpointManager: params, optimizer state, step;
training resumes from the latest one), ``params/`` (final params, ``models.save_params``),
``settings.json`` (hyperparameters; a resume with different ones is refused) and
``metadata.json`` (preset, steps, final and held-out loss, timing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import sysconfig
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from tqdm import tqdm

from models import forward, init_params, preset, save_params

HELDOUT_MODULUS = 20
SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})


def stdlib_root() -> str:
    """The running interpreter's standard library folder."""
    return sysconfig.get_paths()["stdlib"]


def is_heldout(relpath: str) -> bool:
    """The fixed split: a file is held out iff crc32 of its relative path is 0 mod 20."""
    return zlib.crc32(relpath.encode("utf-8")) % HELDOUT_MODULUS == 0


def stdlib_sources(root: str | None = None) -> list[str]:
    """Relative paths of the library's ``*.py`` files, sorted (the deterministic file order)."""
    root = stdlib_root() if root is None else root
    if not os.path.isdir(root):
        raise FileNotFoundError(f"standard library folder not found: {root}")
    paths = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in SKIPPED_DIRS]
        paths += [os.path.relpath(os.path.join(folder, f), root) for f in files if f.endswith(".py")]
    return sorted(paths)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Byte streams of the two splits (files joined in path order)."""

    train: np.ndarray  # uint8 [train_bytes]
    heldout: np.ndarray  # uint8 [heldout_bytes]
    heldout_files: tuple[str, ...]  # relative paths, in order


def _read_joined(root: str, paths: list[str], max_bytes: int | None) -> tuple[np.ndarray, list[str]]:
    chunks, used, total = [], [], 0
    for path in paths:
        if max_bytes is not None and total >= max_bytes:
            break
        with open(os.path.join(root, path), "rb") as f:
            chunks.append(f.read() + b"\n")
        used.append(path)
        total += len(chunks[-1])
    data = np.frombuffer(b"".join(chunks), np.uint8)
    return (data if max_bytes is None else data[:max_bytes]), used


def load_corpus(max_bytes: int | None = None, root: str | None = None) -> Corpus:
    """Reads the stdlib split; ``max_bytes`` caps each split (whole files in order, then cut)."""
    root = stdlib_root() if root is None else root
    paths = stdlib_sources(root)
    train, _ = _read_joined(root, [p for p in paths if not is_heldout(p)], max_bytes)
    heldout, used = _read_joined(root, [p for p in paths if is_heldout(p)], max_bytes)
    return Corpus(train=train, heldout=heldout, heldout_files=tuple(used))


def batch_at(data: np.ndarray, step: int, batch: int, seq_len: int, seed: int) -> np.ndarray:
    """The training windows of ``step``: int32 [batch, seq_len + 1], random offsets drawn from
    ``(seed, step)`` alone. ``data``: uint8 [n]."""
    if data.shape[0] < seq_len + 2:
        raise ValueError(f"corpus has {data.shape[0]} bytes, need at least seq_len + 2 = {seq_len + 2}")
    starts = np.random.default_rng((seed, step)).integers(0, data.shape[0] - seq_len, size=batch)
    return data[starts[:, None] + np.arange(seq_len + 1)[None, :]].astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters. ``steps`` is where this run stops; ``schedule_steps`` (default: steps) is
    the length of the warmup + cosine learning-rate schedule, so a run may stop early and a later
    run resume along the same schedule."""

    preset: str = "small"
    steps: int = 400
    batch: int = 16
    seq_len: int = 256
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    schedule_steps: int | None = None
    weight_decay: float = 0.1
    seed: int = 0
    checkpoint_every: int = 50
    eval_batches: int = 8

    def validate(self) -> None:
        for name in ("steps", "batch", "seq_len", "checkpoint_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"need warmup_steps >= 0 and learning_rate > 0, got {self.warmup_steps}, {self.learning_rate}")
        if self.schedule_steps is not None and self.schedule_steps < self.steps:
            raise ValueError(f"schedule_steps ({self.schedule_steps}) must be >= steps ({self.steps})")

    @property
    def horizon(self) -> int:
        return self.steps if self.schedule_steps is None else self.schedule_steps


@struct.dataclass
class TrainState:
    """Everything a resumed run needs."""

    params: Any  # pytree of float arrays (models.init_params layout)
    opt_state: Any  # optax state pytree
    step: jax.Array  # int32 []


def make_optimizer(settings: TrainSettings) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on a linear-warmup + cosine schedule (decay on matrices only)."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        decay_steps=max(settings.horizon, settings.warmup_steps + 1),
        end_value=settings.learning_rate * 0.1,
    )
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=settings.weight_decay, mask=decay_mask),
    )


def next_byte_loss(config: Any, params: Any, windows: jax.Array) -> jax.Array:
    """Mean next-byte cross entropy (nats) of windows int32 [batch, S + 1], via the no-cache forward.

    ``config`` (a hashable ``LlamaConfig``) is static under jit; ``params`` and ``windows`` are traced.
    """
    logits = forward(config, params, windows[:, :-1])  # float32 [batch, S, vocab]
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), windows[:, 1:]).mean()


def make_train_step(config: Any, optimizer: optax.GradientTransformation):
    """A jitted ``(state, windows int32 [batch, S + 1]) -> (state, loss float32 [])``; donates ``state``.

    ``config`` and ``optimizer`` are closed over (a new pair compiles anew); state and windows are traced.
    """

    def train_step(state: TrainState, windows: jax.Array) -> tuple[TrainState, jax.Array]:
        loss, grads = jax.value_and_grad(lambda p: next_byte_loss(config, p, windows))(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params=params, opt_state=opt_state, step=state.step + 1), loss

    return jax.jit(train_step, donate_argnames="state")


_eval_loss = jax.jit(next_byte_loss, static_argnums=0)


def evaluate(config: Any, params: Any, data: np.ndarray, settings: TrainSettings) -> float:
    """Mean next-byte loss over ``eval_batches`` fixed, evenly spaced windows of ``data`` (uint8 [n])."""
    count = settings.eval_batches * settings.batch
    if data.shape[0] < settings.seq_len + 2:
        raise ValueError(f"evaluation data has {data.shape[0]} bytes, need at least {settings.seq_len + 2}")
    starts = np.linspace(0, data.shape[0] - settings.seq_len - 1, count).astype(np.int64)
    windows = data[starts[:, None] + np.arange(settings.seq_len + 1)[None, :]].astype(np.int32)
    per_batch = [float(_eval_loss(config, params, w)) for w in np.split(windows, settings.eval_batches)]
    return float(np.mean(per_batch))


def _check_settings(out_dir: str, settings: TrainSettings) -> None:
    """Writes settings.json, or refuses to resume a run whose hyperparameters differ. ``steps`` may
    differ; the schedule length (``horizon``: schedule_steps, else steps) may not."""
    path = os.path.join(out_dir, "settings.json")
    current = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("steps", "schedule_steps")}
    current["horizon"] = settings.horizon
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        differing = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if differing:
            raise ValueError(
                f"{out_dir} holds a run with other settings (saved, requested): {differing}; "
                "to train further along the same schedule, pass the saved horizon as --schedule-steps"
            )
    with open(path, "w") as f:
        json.dump(current, f, indent=2)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns (``metadata`` is also written to ``metadata.json``)."""

    params: Any  # pytree of float arrays
    start_step: int  # 0 for a fresh run, else the checkpoint step it resumed from
    losses: tuple[float, ...]  # training loss of each step this run took
    heldout_loss: float
    metadata: dict[str, Any]


def train(settings: TrainSettings, corpus: Corpus, out_dir: str, progress: bool = True) -> TrainResult:
    """Trains ``settings.preset`` on ``corpus.train`` into ``out_dir`` (absolute or relative),
    resuming from the latest checkpoint there. Returns the final params and the losses."""
    settings.validate()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    _check_settings(out_dir, settings)
    config = preset(settings.preset)
    if config.vocab_size < 256:
        raise ValueError(f"preset {settings.preset!r} has vocab_size {config.vocab_size}; byte-level training needs 256")
    optimizer = make_optimizer(settings)
    params = init_params(config, jax.random.key(settings.seed))
    state = TrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))

    options = ocp.CheckpointManagerOptions(
        save_interval_steps=settings.checkpoint_every, max_to_keep=2, enable_async_checkpointing=False
    )
    with ocp.CheckpointManager(os.path.join(out_dir, "checkpoints"), options=options) as manager:
        start = manager.latest_step() or 0
        if start:
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
            state = manager.restore(start, args=ocp.args.StandardRestore(abstract))
        train_step = make_train_step(config, optimizer)
        losses = []
        began = time.perf_counter()
        bar = tqdm(total=settings.steps, initial=min(start, settings.steps), desc=settings.preset, disable=not progress)
        for step in range(start, settings.steps):
            windows = batch_at(corpus.train, step, settings.batch, settings.seq_len, settings.seed)
            state, loss = train_step(state, windows)
            losses.append(float(loss))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)
            manager.save(step + 1, args=ocp.args.StandardSave(state))
        bar.close()
        if settings.steps not in manager.all_steps() and settings.steps > start:
            manager.save(settings.steps, args=ocp.args.StandardSave(state), force=True)
        seconds = time.perf_counter() - began

    save_params(os.path.join(out_dir, "params"), state.params, overwrite=True)
    heldout = evaluate(config, state.params, corpus.heldout, settings)
    metadata = {
        "preset": settings.preset,
        "steps": int(state.step),
        "resumed_from": start,
        "final_loss": float(np.mean(losses[-10:])) if losses else None,
        "heldout_loss": heldout,
        "train_bytes": int(corpus.train.shape[0]),
        "tokens_seen": int(state.step) * settings.batch * settings.seq_len,
        "seconds_this_run": seconds,
        "settings": dataclasses.asdict(settings),
    }
    with open(os.path.join(out_dir, "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2)
    return TrainResult(state.params, start, tuple(losses), heldout, metadata)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="models preset to train (default: small)")
    parser.add_argument("--both", action="store_true", help="train --preset into OUT/target and --draft-preset into OUT/draft")
    parser.add_argument("--draft-preset", default="draft", help="preset of the draft with --both (default: draft)")
    parser.add_argument("--out", required=True, help="output folder (resumes from its checkpoints)")
    defaults = TrainSettings()
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"optimizer steps (default {defaults.steps})")
    parser.add_argument("--schedule-steps", type=int, default=None, help="learning-rate schedule length (default: --steps)")
    parser.add_argument("--batch", type=int, default=defaults.batch, help=f"windows per step (default {defaults.batch})")
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len, help=f"bytes per window (default {defaults.seq_len})")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help=f"peak learning rate (default {defaults.learning_rate})")
    parser.add_argument("--warmup", type=int, default=defaults.warmup_steps, help=f"linear warm-up steps (default {defaults.warmup_steps})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"initialization and batch-order seed (default {defaults.seed})")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, help=f"steps between checkpoints (default {defaults.checkpoint_every})")
    parser.add_argument("--max-bytes", type=int, default=None, help="cap on corpus bytes per split")
    args = parser.parse_args(argv)

    def settings_for(name: str) -> TrainSettings:
        return TrainSettings(
            preset=name, steps=args.steps, batch=args.batch, seq_len=args.seq_len, learning_rate=args.lr,
            warmup_steps=args.warmup, schedule_steps=args.schedule_steps, seed=args.seed,
            checkpoint_every=args.checkpoint_every,
        )

    jobs = [(args.preset, args.out)]
    if args.both:
        jobs = [(args.preset, os.path.join(args.out, "target")), (args.draft_preset, os.path.join(args.out, "draft"))]
    try:  # every argument is checked before the corpus is read or anything is written
        for name, _ in jobs:
            preset(name)
            settings_for(name).validate()
        if args.max_bytes is not None and args.max_bytes < 1:
            raise ValueError(f"--max-bytes must be >= 1, got {args.max_bytes}")
    except ValueError as err:
        parser.error(str(err))

    corpus = load_corpus(args.max_bytes)
    print(f"corpus: {corpus.train.shape[0]:,} train bytes, {corpus.heldout.shape[0]:,} held-out bytes "
          f"({len(corpus.heldout_files)} held-out files)", file=sys.stderr)
    for name, out_dir in jobs:
        result = train(settings_for(name), corpus, out_dir)
        print(json.dumps({k: result.metadata[k] for k in ("preset", "steps", "final_loss", "heldout_loss", "seconds_this_run")}))


if __name__ == "__main__":
    main()
