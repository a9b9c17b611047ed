"""Training the retriever: a decoder from ``models/`` on history -> next item's ID tokens.

A training sequence is ``BOS`` followed by the tokens of up to ``max_history + 1`` consecutive
items of one user's training events; the loss is next-token cross entropy at every item token
(every position is a target, not only the last item). The windows of step ``s`` depend only on
``(seed, s)``: each is the run of events ending at an event drawn uniformly from all training
events, so a resumed run sees exactly the batches an uninterrupted one would.

Model selection: every ``eval_every`` steps, Recall@10 of constrained beam search on (a fixed
subsample of) the validation split; the best parameters are kept in ``RUN/params``.

Run folder::

    RUN/config.json       model config, max_history, token layout (what the job loads)
    RUN/catalog/          item <-> semantic ID map (retrieval.catalog)
    RUN/params/           the selected parameters (models.save_params)
    RUN/checkpoints/      orbax CheckpointManager: params, optimizer state, step (resume)
    RUN/train.json        settings, losses, validation recall per evaluation, best step
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from tqdm import tqdm

from models import Decoder, LlamaConfig, forward, init_params, restore_params, save_params
from retrieval.catalog import BOS_ID, PAD_ID, Catalog
from retrieval.metrics import recall_at
from retrieval.preprocess import Examples, Sequences
from retrieval.search import AllowedItems, Retriever, constrained_top_k

MODEL_SIZES = {
    # dim, layers, heads, kv heads, head_dim, hidden
    "tiny": (64, 2, 4, 2, 16, 192),
    "small": (128, 4, 4, 2, 32, 384),
}


def retriever_config(vocab_size: int, size: str = "tiny") -> LlamaConfig:
    """A small Llama-family decoder over the catalog's token layout (``size`` in MODEL_SIZES)."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; known: {sorted(MODEL_SIZES)}")
    dim, layers, heads, kv_heads, head_dim, hidden = MODEL_SIZES[size]
    return LlamaConfig(
        vocab_size=vocab_size, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
        head_dim=head_dim, hidden_dim=hidden, tie_embeddings=True,
    )


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters (a resumed run must use the same ones)."""

    model_size: str = "tiny"
    steps: int = 1200
    batch: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05
    seed: int = 0
    eval_every: int = 200
    eval_users: int = 400
    eval_beams: int = 20

    def validate(self) -> None:
        for name in ("steps", "batch", "eval_every", "eval_users", "eval_beams"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainSettings.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and np.isfinite(self.learning_rate)) or self.warmup_steps < 0:
            raise ValueError(f"need learning_rate > 0 and warmup_steps >= 0, got {self.learning_rate}, {self.warmup_steps}")
        if self.eval_beams < 10:
            raise ValueError("eval_beams must be >= 10 (model selection uses Recall@10)")


def training_windows(
    train: Sequences, catalog: Catalog, step: int, batch: int, max_history: int, seed: int
) -> np.ndarray:  # int32 [batch, 1 + (max_history + 1) * depth]
    """The token windows of ``step``: BOS + up to ``max_history + 1`` items, PAD after."""
    total = len(train.items)
    if total == 0:
        raise ValueError("no training events")
    ends = np.random.default_rng((seed, step)).integers(0, total, size=batch)
    users = np.searchsorted(train.offsets, ends, side="right") - 1
    starts = np.maximum(train.offsets[users], ends - max_history)
    width = max_history + 1
    positions = starts[:, None] + np.arange(width)[None, :]
    present = positions <= ends[:, None]
    items = train.items[np.where(present, positions, 0)]
    tokens = np.where(present[..., None], catalog.tokens[items], PAD_ID).reshape(batch, width * catalog.depth)
    return np.concatenate([np.full((batch, 1), BOS_ID, np.int32), tokens.astype(np.int32)], axis=1)


def item_token_loss(config: LlamaConfig, params: Any, windows: jax.Array) -> jax.Array:
    """Mean cross entropy (nats) over every non-PAD target of windows int32 [batch, S + 1].

    ``config`` is static; ``params`` and ``windows`` are traced.
    """
    logits = forward(config, params, windows[:, :-1]).astype(jnp.float32)
    targets = windows[:, 1:]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    mask = (targets != PAD_ID).astype(jnp.float32)
    return (losses * mask).sum() / jnp.maximum(mask.sum(), 1.0)


@struct.dataclass
class TrainState:
    params: Any  # pytree of float arrays
    opt_state: Any  # optax state
    step: jax.Array  # int32 []


def _optimizer(settings: TrainSettings) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.learning_rate, settings.warmup_steps, max(settings.steps, settings.warmup_steps + 1),
        end_value=settings.learning_rate * 0.05,
    )
    decay = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=settings.weight_decay, mask=decay))


def _train_step(config: LlamaConfig, optimizer: optax.GradientTransformation) -> Callable:
    def step(state: TrainState, windows: jax.Array) -> tuple[TrainState, jax.Array]:
        loss, grads = jax.value_and_grad(lambda p: item_token_loss(config, p, windows))(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), loss

    return jax.jit(step, donate_argnames="state")


def validation_recall(retriever: Retriever, allowed: AllowedItems, valid: Examples, settings: TrainSettings) -> float:
    """Recall@10 of constrained beam search on the first ``eval_users`` validation examples."""
    take = min(settings.eval_users, len(valid.targets))
    history = valid.history[:take]
    top = constrained_top_k(retriever, allowed, history, k=10, num_beams=settings.eval_beams, exclude=history)
    return recall_at(top.items, valid.targets[:take], 10)


def config_to_json(config: LlamaConfig) -> dict[str, Any]:
    fields = dataclasses.asdict(config)
    fields["param_dtype"], fields["dtype"] = str(config.param_dtype), str(config.dtype)
    if config.rope_scaling is not None:
        raise ValueError("retriever configs have no RoPE scaling")
    return fields


def save_run_config(run_dir: str, config: LlamaConfig, max_history: int, catalog: Catalog) -> None:
    """Writes ``config.json`` and ``catalog/`` (what :func:`load_retriever` needs besides params)."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({"model": config_to_json(config), "max_history": max_history}, f, indent=2)
    catalog.save(os.path.join(run_dir, "catalog"))


def load_retriever(run_dir: str) -> Retriever:
    """The selected retriever of a training run folder (config.json, catalog/, params/).

    Raises FileNotFoundError naming what is missing and ValueError for unreadable files.
    """
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir} is not a retriever run folder: {path} is missing")
    try:
        with open(path) as f:
            saved = json.load(f)
        config = LlamaConfig(**saved["model"])
        max_history = int(saved["max_history"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable retriever config ({err})") from err
    catalog = Catalog.load(os.path.join(run_dir, "catalog"))
    if catalog.layout.vocab_size != config.vocab_size:
        raise ValueError(f"{path}: vocab_size {config.vocab_size} differs from the catalog's {catalog.layout.vocab_size}")
    like = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    params = restore_params(os.path.join(run_dir, "params"), like=like)
    return Retriever(Decoder(config), params, catalog, max_history)


def _check_settings(run_dir: str, settings: TrainSettings, catalog: Catalog, max_history: int) -> None:
    path = os.path.join(run_dir, "settings.json")
    current = {**dataclasses.asdict(settings), "catalog": catalog.fingerprint(), "max_history": max_history}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        differing = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if differing:
            raise ValueError(f"{run_dir} holds a run with other settings or data (saved, requested): {differing}")
    with open(path, "w") as f:
        json.dump(current, f, indent=2)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    retriever: Retriever  # with the selected (best validation recall) parameters
    log: dict[str, Any]  # what train.json holds


def train_retriever(
    train: Sequences,
    valid: Examples,
    catalog: Catalog,
    run_dir: str,
    settings: TrainSettings = TrainSettings(),
    *,
    max_history: int = 20,
    progress: bool = True,
) -> TrainResult:
    """Trains (or resumes training) into ``run_dir`` and returns the selected retriever.

    A run folder already holding ``settings.steps`` steps returns at once (with its log).
    """
    settings.validate()
    run_dir = os.path.abspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    _check_settings(run_dir, settings, catalog, max_history)
    config = retriever_config(catalog.layout.vocab_size, settings.model_size)
    save_run_config(run_dir, config, max_history, catalog)
    optimizer = _optimizer(settings)
    params = init_params(config, jax.random.key(settings.seed))
    state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
    log_path = os.path.join(run_dir, "train.json")
    log = {"settings": dataclasses.asdict(settings), "losses": [], "evals": [], "best": None, "seconds": 0.0}
    allowed = AllowedItems.build(catalog)
    model = Decoder(config)
    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
    with ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"), options=options) as manager:
        start = manager.latest_step() or 0
        if start:
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
            state = manager.restore(start, args=ocp.args.StandardRestore(abstract))
            with open(log_path) as f:
                log = json.load(f)
            # The log may run ahead of the checkpoint (written first): keep what the state has seen.
            log["losses"] = log["losses"][:start]
            log["evals"] = [e for e in log["evals"] if e["step"] <= start]
        step_fn = _train_step(config, optimizer)
        began = time.perf_counter()
        bar = tqdm(total=settings.steps, initial=start, desc="train retriever", disable=not progress)
        for step in range(start, settings.steps):
            windows = training_windows(train, catalog, step, settings.batch, max_history, settings.seed)
            state, loss = step_fn(state, jnp.asarray(windows))
            log["losses"].append(float(loss))
            bar.update(1)
            done = step + 1
            if done % settings.eval_every == 0 or done == settings.steps:
                recall = validation_recall(Retriever(model, state.params, catalog, max_history), allowed, valid, settings)
                log["evals"].append({"step": done, "valid_recall@10": recall})
                bar.set_postfix(loss=f"{float(loss):.3f}", valid_r10=f"{recall:.4f}")
                if log["best"] is None or recall > log["best"]["valid_recall@10"]:
                    log["best"] = {"step": done, "valid_recall@10": recall}
                    save_params(os.path.join(run_dir, "params"), state.params, overwrite=True)
                log["seconds"] += time.perf_counter() - began
                began = time.perf_counter()
                with open(log_path + ".tmp", "w") as f:
                    json.dump(log, f)
                os.replace(log_path + ".tmp", log_path)
                manager.save(done, args=ocp.args.StandardSave(state), force=True)
        bar.close()
    return TrainResult(load_retriever(run_dir), log)
