"""Loading Hugging Face Llama / Qwen2 / Mistral checkpoints (config.json + safetensors).

``config, params = load_hf_checkpoint("/path/to/hf_dir")`` reads ``config.json`` and either
``model.safetensors``, the shards listed in ``model.safetensors.index.json``, or every
``*.safetensors`` file of the directory. Linear weights (HF ``[out, in]``) are transposed into
our ``[in, out]`` kernels; see :mod:`models.layers` for the parameter layout.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors import safe_open

from models.config import Llama3RopeScaling, LlamaConfig
from models.decoder import Params, init_params

# Supported model_type -> whether its q/k/v projections always have biases (else config.json's
# "attention_bias" decides).
_MODEL_TYPES = {"llama": False, "mistral": False, "qwen2": True}

# Tensors some exports carry that the model does not use.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def _field(raw: dict, key: str, path: str) -> Any:
    if key not in raw:
        raise ValueError(f"{path}: config.json has no field {key!r}")
    return raw[key]


def _rope_scaling(raw: dict, path: str) -> Llama3RopeScaling | None:
    """From ``rope_scaling`` (transformers 4) or ``rope_parameters`` (transformers 5)."""
    scaling = raw.get("rope_parameters") or raw.get("rope_scaling")
    if scaling is None:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ValueError(
            f"{path}: unsupported rope_scaling {scaling!r}; only rope_type 'llama3' (or none) is implemented"
        )
    fields = {
        "factor": float(_field(scaling, "factor", path)),
        "low_freq_factor": float(_field(scaling, "low_freq_factor", path)),
        "high_freq_factor": float(_field(scaling, "high_freq_factor", path)),
        "original_max_position": int(_field(scaling, "original_max_position_embeddings", path)),
    }
    try:
        return Llama3RopeScaling(**fields)
    except ValueError as err:
        raise ValueError(f"{path}: invalid rope scaling: {err}") from err


def _sliding_window(raw: dict, model_type: str) -> int | None:
    if model_type == "qwen2" and not raw.get("use_sliding_window", False):
        return None
    return raw.get("sliding_window")


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
    dim = int(_field(raw, "hidden_size", path))
    n_heads = int(_field(raw, "num_attention_heads", path))
    head_dim = raw.get("head_dim") or dim // n_heads
    attention_bias = _MODEL_TYPES[model_type] or bool(raw.get("attention_bias", False))
    dtype = jnp.float32 if dtype is None else dtype
    rope_scaling = _rope_scaling(raw, path)
    try:
        return LlamaConfig(
            vocab_size=int(_field(raw, "vocab_size", path)),
            dim=dim,
            n_layers=int(_field(raw, "num_hidden_layers", path)),
            n_heads=n_heads,
            n_kv_heads=int(raw.get("num_key_value_heads") or n_heads),
            head_dim=int(head_dim),
            hidden_dim=int(_field(raw, "intermediate_size", path)),
            rope_theta=float((raw.get("rope_parameters") or raw).get("rope_theta", 10000.0)),
            norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            rope_scaling=rope_scaling,
            sliding_window=_sliding_window(raw, model_type),
            param_dtype=dtype,
            dtype=dtype,
        )
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
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
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
        with safe_open(file, framework="np") as f:
            for name in f.keys():
                if name in locations:
                    raise ValueError(f"tensor {name!r} appears in both {locations[name]} and {file}")
                locations[name] = file
    return locations


def load_hf_checkpoint(path: str | os.PathLike, dtype: Any = None) -> tuple[LlamaConfig, Params]:
    """Reads a Hugging Face checkpoint directory into ``(config, params)``.

    ``dtype`` (e.g. ``jnp.bfloat16``) sets the parameter and activation dtype; None keeps
    float32. Raises FileNotFoundError for missing files and ValueError naming the path and the
    field or tensor for an unsupported model, a missing, misshapen or unexpected tensor.
    """
    path = os.fspath(path)
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{path}: no config.json")
    with open(config_path) as f:
        config = config_from_hf(json.load(f), config_path, dtype)
    locations = _tensor_locations(_tensor_files(path))

    abstract = traverse_util.flatten_dict(jax.eval_shape(functools.partial(init_params, config), jax.random.key(0)))
    flat = {}
    used = set()
    for key, spec in abstract.items():
        name, transpose = hf_name(key)
        if name not in locations:
            raise ValueError(f"{path}: missing tensor {name!r} (needed for parameter {'/'.join(key)})")
        with safe_open(locations[name], framework="np") as f:
            tensor = f.get_tensor(name)
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
