"""Loading Hugging Face Llama / Qwen2 / Mistral checkpoints (config.json + safetensors).

``config, params = load_hf_checkpoint("/path/to/hf_dir")`` reads ``config.json`` and either
``model.safetensors``, the shards listed in ``model.safetensors.index.json``, or every
``*.safetensors`` file of the directory. Linear weights (HF ``[out, in]``) are transposed into
our ``[in, out]`` kernels; see :mod:`models.layers` for the parameter layout.

Every error names the file and the field or tensor: a config.json that is not JSON or has a
non-numeric field, a truncated or foreign safetensors file and a tensor holding NaN or inf
raise :class:`models.checkpoint.CheckpointError` (a ValueError) with the parser's error chained.
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open

from models.checkpoint import CheckpointError
from models.config import Llama3RopeScaling, LlamaConfig
from models.decoder import Params, init_params

# Supported model_type -> whether its q/k/v projections always have biases (else config.json's
# "attention_bias" decides).
_MODEL_TYPES = {"llama": False, "mistral": False, "qwen2": True}

# Tensors some exports carry that the model does not use.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


_REQUIRED = object()


def _field(raw: dict, key: str, path: str) -> Any:
    if key not in raw:
        raise ValueError(f"{path}: config.json has no field {key!r}")
    return raw[key]


def _number(raw: dict, key: str, path: str, kind: type = int, default: Any = _REQUIRED) -> Any:
    """``raw[key]`` as a finite ``kind`` (int or float), ``default`` when absent or null (if
    given), or a CheckpointError naming the file and the field."""
    value = _field(raw, key, path) if default is _REQUIRED else raw.get(key)
    if value is None and default is not _REQUIRED:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (kind is int and value != int(value)):
        expected = "an integer" if kind is int else "a finite number"
        raise CheckpointError(f"{path}: field {key!r} must be {expected}, got {value!r}")
    return kind(value)


def _read_json(path: str) -> Any:
    """A JSON file's content, or a CheckpointError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({type(err).__name__}: {err})") from err


def _rope_scaling(raw: dict, path: str) -> Llama3RopeScaling | None:
    """From ``rope_scaling`` (transformers 4) or ``rope_parameters`` (transformers 5)."""
    scaling = raw.get("rope_parameters") or raw.get("rope_scaling")
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise CheckpointError(f"{path}: field 'rope_scaling' must be an object, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ValueError(
            f"{path}: unsupported rope_scaling {scaling!r}; only rope_type 'llama3' (or none) is implemented"
        )
    fields = {
        "factor": _number(scaling, "factor", path, float),
        "low_freq_factor": _number(scaling, "low_freq_factor", path, float),
        "high_freq_factor": _number(scaling, "high_freq_factor", path, float),
        "original_max_position": _number(scaling, "original_max_position_embeddings", path),
    }
    try:
        return Llama3RopeScaling(**fields)
    except ValueError as err:
        raise ValueError(f"{path}: invalid rope scaling: {err}") from err


def _sliding_window(raw: dict, model_type: str, path: str) -> int | None:
    if model_type == "qwen2" and not raw.get("use_sliding_window", False):
        return None
    return _number(raw, "sliding_window", path, int, default=None)


def config_from_hf(raw: dict, path: str, dtype: Any = None) -> LlamaConfig:
    """A :class:`LlamaConfig` from a parsed ``config.json`` (``path`` is used in errors).

    ``dtype`` sets both ``param_dtype`` and ``dtype``; None means float32.
    """
    model_type = raw.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"{path}: unsupported model_type {model_type!r}; supported: {sorted(_MODEL_TYPES)}")
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{path}: unsupported hidden_act {act!r}; only 'silu' (SwiGLU) is implemented")
    if raw.get("mlp_bias", False):
        raise ValueError(f"{path}: mlp_bias=true is not supported")
    dim = _number(raw, "hidden_size", path)
    n_heads = _number(raw, "num_attention_heads", path)
    if n_heads < 1:
        raise CheckpointError(f"{path}: field 'num_attention_heads' must be positive, got {n_heads}")
    head_dim = _number(raw, "head_dim", path, default=None) or dim // n_heads
    attention_bias = _MODEL_TYPES[model_type] or bool(raw.get("attention_bias", False))
    dtype = jnp.float32 if dtype is None else dtype
    rope_scaling = _rope_scaling(raw, path)
    rope_source = raw.get("rope_parameters") if isinstance(raw.get("rope_parameters"), dict) else raw
    fields = dict(
        vocab_size=_number(raw, "vocab_size", path),
        dim=dim,
        n_layers=_number(raw, "num_hidden_layers", path),
        n_heads=n_heads,
        n_kv_heads=_number(raw, "num_key_value_heads", path, default=None) or n_heads,
        head_dim=head_dim,
        hidden_dim=_number(raw, "intermediate_size", path),
        rope_theta=_number(rope_source, "rope_theta", path, float, default=10000.0),
        norm_eps=_number(raw, "rms_norm_eps", path, float, default=1e-6),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        rope_scaling=rope_scaling,
        sliding_window=_sliding_window(raw, model_type, path),
        param_dtype=dtype,
        dtype=dtype,
    )
    try:
        return LlamaConfig(**fields)
    except ValueError as err:
        raise ValueError(f"{path}: invalid config.json: {err}") from err


def hf_name(key: tuple[str, ...]) -> tuple[str, bool]:
    """The HF tensor name of our parameter ``key`` (a path tuple) and whether to transpose it."""
    top = key[0]
    if top == "embed":
        return "model.embed_tokens.weight", False
    if top == "final_norm":
        return "model.norm.weight", False
    if top == "lm_head":
        return "lm_head.weight", True
    layer = int(top.removeprefix("layers_"))
    prefix = f"model.layers.{layer}"
    if key[1] == "attn_norm":
        return f"{prefix}.input_layernorm.weight", False
    if key[1] == "mlp_norm":
        return f"{prefix}.post_attention_layernorm.weight", False
    block = "self_attn" if key[1] == "attn" else "mlp"
    suffix = "weight" if key[3] == "kernel" else "bias"
    return f"{prefix}.{block}.{key[2]}.{suffix}", key[3] == "kernel"


def _tensor_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        content = _read_json(index)
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' object")
        files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"{index} lists shard files that do not exist: {missing}")
        return files
    single = os.path.join(path, "model.safetensors")
    files = [single] if os.path.exists(single) else sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{path}: no model.safetensors, model.safetensors.index.json or *.safetensors")
    return files


def _tensor_locations(files: list[str]) -> dict[str, str]:
    """Maps every tensor name to the file that holds it."""
    locations: dict[str, str] = {}
    for file in files:
        try:
            with safe_open(file, framework="np") as f:
                names = list(f.keys())
        except Exception as err:  # safetensors raises its own SafetensorError (not a ValueError)
            raise CheckpointError(f"{file}: not a readable safetensors file ({type(err).__name__}: {err})") from err
        for name in names:
            if name in locations:
                raise ValueError(f"tensor {name!r} appears in both {locations[name]} and {file}")
            locations[name] = file
    return locations


def _read_tensor(file: str, name: str) -> np.ndarray:
    """One tensor as a NumPy array, or a CheckpointError naming the file and the tensor (also
    for NaN or inf values: a corrupt checkpoint would otherwise decode silently wrong)."""
    try:
        with safe_open(file, framework="np") as f:
            tensor = f.get_tensor(name)
    except Exception as err:
        raise CheckpointError(f"{file}: cannot read tensor {name!r} ({type(err).__name__}: {err})") from err
    bad = int(tensor.size - np.count_nonzero(np.isfinite(tensor.astype(np.float32, copy=False))))
    if bad:
        raise CheckpointError(f"{file}: tensor {name!r} holds {bad} NaN or infinite values")
    return tensor


def load_hf_checkpoint(path: str | os.PathLike, dtype: Any = None) -> tuple[LlamaConfig, Params]:
    """Reads a Hugging Face checkpoint directory into ``(config, params)``.

    ``dtype`` (e.g. ``jnp.bfloat16``) sets the parameter and activation dtype; None keeps
    float32. Raises FileNotFoundError for missing files, ValueError naming the path and the
    field or tensor for an unsupported model, a missing, misshapen or unexpected tensor, and
    :class:`models.checkpoint.CheckpointError` (a ValueError) naming the file and the field or
    tensor for a file that does not parse or a tensor with NaN or inf values.
    """
    path = os.fspath(path)
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{path}: no config.json")
    raw = _read_json(config_path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, got {type(raw).__name__}")
    config = config_from_hf(raw, config_path, dtype)
    locations = _tensor_locations(_tensor_files(path))

    abstract = traverse_util.flatten_dict(jax.eval_shape(functools.partial(init_params, config), jax.random.key(0)))
    flat = {}
    used = set()
    for key, spec in abstract.items():
        name, transpose = hf_name(key)
        if name not in locations:
            raise ValueError(f"{path}: missing tensor {name!r} (needed for parameter {'/'.join(key)})")
        tensor = _read_tensor(locations[name], name)
        tensor = tensor.T if transpose else tensor
        if tensor.shape != spec.shape:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {tensor.shape[::-1] if transpose else tensor.shape}, expected "
                f"{spec.shape[::-1] if transpose else spec.shape} for this config.json"
            )
        flat[key] = jnp.asarray(np.asarray(tensor, dtype=np.float32), dtype=spec.dtype)
        used.add(name)
    if config.tie_embeddings:
        used.add("lm_head.weight")
    unexpected = sorted(n for n in locations if n not in used and not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(f"{path}: unexpected tensors the model does not use: {unexpected[:5]}")
    return config, traverse_util.unflatten_dict(flat)
