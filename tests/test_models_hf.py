"""Hugging Face checkpoint loading against an independent NumPy reference of the HF forward.

Each test writes a tiny checkpoint itself (config.json + safetensors with random tensors in
HF names and [out, in] layouts), loads it with ``load_hf_checkpoint`` and compares logits with
``hf_reference_logits``, a float64 NumPy transcription of LlamaForCausalLM / Qwen2ForCausalLM
(rotate_half RoPE, repeat_kv grouping, RMSNorm, SwiGLU).
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from models import Decoder, forward, init_cache, load_hf_checkpoint
from models.hf_checkpoint import config_from_hf

TOL = 1e-4
_forward = jax.jit(forward, static_argnums=0)

LLAMA = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 48,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}
QWEN2 = {
    **LLAMA,
    "model_type": "qwen2",
    "num_key_value_heads": 1,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "sliding_window": 4,
}
LLAMA3_SCALED = {
    **LLAMA,
    "head_dim": 16,  # not hidden_size // num_attention_heads
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    },
}


def _head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def hf_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 tensors with HF names and shapes (Linear weights are [out, in])."""
    rng = np.random.default_rng(seed)
    hidden, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q_out = cfg["num_attention_heads"] * _head_dim(cfg)
    kv_out = cfg["num_key_value_heads"] * _head_dim(cfg)

    def linear(out_dim, in_dim):
        return (rng.normal(size=(out_dim, in_dim)) / math.sqrt(in_dim)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.normal(size=(hidden,))).astype(np.float32)

    tensors = {"model.embed_tokens.weight": rng.normal(size=(vocab, hidden)).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        tensors[f"{p}.input_layernorm.weight"] = norm()
        tensors[f"{p}.post_attention_layernorm.weight"] = norm()
        for name, out_dim in (("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)):
            tensors[f"{p}.self_attn.{name}.weight"] = linear(out_dim, hidden)
            if cfg["model_type"] == "qwen2":
                tensors[f"{p}.self_attn.{name}.bias"] = (0.3 * rng.normal(size=(out_dim,))).astype(np.float32)
        tensors[f"{p}.self_attn.o_proj.weight"] = linear(hidden, q_out)
        tensors[f"{p}.mlp.gate_proj.weight"] = linear(inter, hidden)
        tensors[f"{p}.mlp.up_proj.weight"] = linear(inter, hidden)
        tensors[f"{p}.mlp.down_proj.weight"] = linear(hidden, inter)
    tensors["model.norm.weight"] = norm()
    if not cfg["tie_word_embeddings"]:
        tensors["lm_head.weight"] = linear(vocab, hidden)
    return tensors


def reference_inv_freq(cfg: dict) -> np.ndarray:
    """HF's default inverse frequencies, then the llama3 rule applied frequency by frequency."""
    dim = _head_dim(cfg)
    inv_freq = 1.0 / (cfg["rope_theta"] ** (np.arange(0, dim, 2) / dim))
    scaling = cfg.get("rope_scaling")
    if scaling is None:
        return inv_freq
    old_context = scaling["original_max_position_embeddings"]
    low_wavelength = old_context / scaling["low_freq_factor"]
    high_wavelength = old_context / scaling["high_freq_factor"]
    out = []
    for freq in inv_freq:
        wavelength = 2 * math.pi / freq
        if wavelength < high_wavelength:
            out.append(freq)
        elif wavelength > low_wavelength:
            out.append(freq / scaling["factor"])
        else:
            smooth = (old_context / wavelength - scaling["low_freq_factor"]) / (
                scaling["high_freq_factor"] - scaling["low_freq_factor"]
            )
            out.append((1 - smooth) * freq / scaling["factor"] + smooth * freq)
    return np.array(out)


def hf_reference_logits(cfg: dict, tensors: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """float64 NumPy forward of HF LlamaForCausalLM (and Qwen2 when q/k/v biases are present)."""
    t = {k: v.astype(np.float64) for k, v in tensors.items()}
    batch, seq = tokens.shape
    n_heads, n_kv, head_dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], _head_dim(cfg)
    eps = cfg["rms_norm_eps"]

    def rms_norm(x, weight):
        return weight * (x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps))

    def rotate_half(x):
        half = x.shape[-1] // 2
        return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)

    freqs = np.arange(seq)[:, None] * reference_inv_freq(cfg)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)  # [seq, head_dim]
    cos, sin = np.cos(emb), np.sin(emb)
    causal = np.triu(np.full((seq, seq), -np.inf), k=1)

    def proj(x, name, heads):
        y = x @ t[f"{name}.weight"].T
        if f"{name}.bias" in t:
            y = y + t[f"{name}.bias"]
        return y.reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)  # [batch, heads, seq, head_dim]

    x = t["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        h = rms_norm(x, t[f"{p}.input_layernorm.weight"])
        q = proj(h, f"{p}.self_attn.q_proj", n_heads)
        k = proj(h, f"{p}.self_attn.k_proj", n_kv)
        v = proj(h, f"{p}.self_attn.v_proj", n_kv)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = np.repeat(k, n_heads // n_kv, axis=1)  # repeat_kv
        v = np.repeat(v, n_heads // n_kv, axis=1)
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, n_heads * head_dim)
        x = x + attn @ t[f"{p}.self_attn.o_proj.weight"].T
        h = rms_norm(x, t[f"{p}.post_attention_layernorm.weight"])
        gate = h @ t[f"{p}.mlp.gate_proj.weight"].T
        up = h @ t[f"{p}.mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ t[f"{p}.mlp.down_proj.weight"].T
    x = rms_norm(x, t["model.norm.weight"])
    head = t["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else t["lm_head.weight"]
    return x @ head.T


def write_checkpoint(path, cfg: dict, tensors: dict[str, np.ndarray], shards: int = 1):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"))
        return path
    names = sorted(tensors)
    weight_map = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = names[shard::shards]
        save_file({n: tensors[n] for n in part}, str(path / file))
        weight_map.update({n: file for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


TOKENS = np.random.default_rng(1).integers(0, 64, size=(2, 10))


@pytest.mark.parametrize("cfg", [LLAMA, QWEN2, LLAMA3_SCALED], ids=["llama", "qwen2-bias-tied", "llama3-rope"])
def test_loaded_checkpoint_matches_numpy_hf_reference(tmp_path, cfg):
    tensors = hf_tensors(cfg)
    config, params = load_hf_checkpoint(write_checkpoint(tmp_path, cfg, tensors))
    assert config.attention_bias == (cfg["model_type"] == "qwen2")
    assert config.sliding_window is None and config.head_dim == _head_dim(cfg)
    np.testing.assert_allclose(config.rope_inv_freq, reference_inv_freq(cfg), rtol=1e-6)
    expected = hf_reference_logits(cfg, tensors, TOKENS)
    assert expected.std() > 0.5
    got = np.asarray(_forward(config, params, jnp.asarray(TOKENS, jnp.int32)))
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=TOL)


def test_sharded_checkpoint_with_index_and_cached_decoder(tmp_path):
    tensors = hf_tensors(LLAMA, seed=3)
    config, params = load_hf_checkpoint(write_checkpoint(tmp_path, LLAMA, tensors, shards=3))
    expected = hf_reference_logits(LLAMA, tensors, TOKENS)
    cache = init_cache(config, 2, 16)
    logits, _ = jax.jit(Decoder(config))(params, jnp.asarray(TOKENS, jnp.int32), cache, jnp.full((2,), 10))
    np.testing.assert_allclose(np.asarray(logits), expected, atol=TOL, rtol=TOL)


def test_transformers5_rope_parameters_format():
    """transformers 5 writes rope_theta and the scaling fields into one "rope_parameters" object."""
    legacy = config_from_hf(LLAMA3_SCALED, "config.json")
    parameters = {**LLAMA3_SCALED["rope_scaling"], "rope_theta": 500000.0}
    raw = {k: v for k, v in LLAMA3_SCALED.items() if k != "rope_scaling"} | {"rope_parameters": parameters}
    raw.pop("rope_theta")
    config = config_from_hf(raw, "config.json")
    assert config.rope_theta == 500000.0 and config.rope_scaling == legacy.rope_scaling
    default = config_from_hf({**LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}, "x")
    assert default.rope_theta == 7.0 and default.rope_scaling is None


def test_dtype_argument_casts_parameters(tmp_path):
    config, params = load_hf_checkpoint(write_checkpoint(tmp_path, LLAMA, hf_tensors(LLAMA)), dtype=jnp.bfloat16)
    assert config.dtype == jnp.bfloat16 and config.param_dtype == jnp.bfloat16
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


def test_mistral_window_is_accepted_only_up_to_capacity(tmp_path):
    cfg = {**LLAMA, "model_type": "mistral", "sliding_window": 8}
    config, _ = load_hf_checkpoint(write_checkpoint(tmp_path, cfg, hf_tensors(cfg)))
    assert config.sliding_window == 8
    assert init_cache(config, 1, 8).capacity == 8
    with pytest.raises(ValueError, match="sliding window"):
        init_cache(config, 1, 9)


def _broken(tmp_path, cfg=LLAMA, drop=(), reshape=(), extra=()):
    """LLAMA's tensors with some changed, next to ``cfg`` (config errors are caught before tensors)."""
    tensors = hf_tensors(LLAMA)
    for name in drop:
        del tensors[name]
    for name in reshape:
        tensors[name] = tensors[name][:-1]
    for name in extra:
        tensors[name] = np.zeros((2,), np.float32)
    return write_checkpoint(tmp_path, cfg, tensors)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"cfg": {**LLAMA, "model_type": "gpt2"}}, ValueError, "model_type 'gpt2'"),
        ({"cfg": {k: v for k, v in LLAMA.items() if k != "hidden_size"}}, ValueError, "hidden_size"),
        ({"cfg": {**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}}, ValueError, "rope_scaling"),
        ({"cfg": {**LLAMA, "hidden_act": "gelu"}}, ValueError, "hidden_act"),
        ({"cfg": {**LLAMA, "num_key_value_heads": 3}}, ValueError, "n_kv_heads"),
        ({"drop": ["model.layers.1.mlp.up_proj.weight"]}, ValueError, r"model\.layers\.1\.mlp\.up_proj\.weight"),
        ({"reshape": ["model.layers.0.self_attn.k_proj.weight"]}, ValueError, r"k_proj\.weight' has shape \(15, 32\)"),
        ({"extra": ["model.layers.0.mlp.up_proj.bias"]}, ValueError, "unexpected tensors"),
    ],
    ids=["model-type", "missing-field", "rope-scaling", "activation", "heads", "missing", "shape", "unexpected"],
)
def test_bad_checkpoints_raise_clear_errors(tmp_path, kwargs, error, message):
    path = _broken(tmp_path, **kwargs)
    with pytest.raises(error, match=message) as info:
        load_hf_checkpoint(path)
    assert str(tmp_path) in str(info.value)


def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        load_hf_checkpoint(tmp_path)


def test_parity_with_transformers_llama(tmp_path):
    """Optional peer check: our logits equal transformers' LlamaForCausalLM (skipped without torch)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, rms_norm_eps=1e-5, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():
        for weight in model.parameters():
            weight.normal_(0.0, 0.3)
        expected = model(torch.tensor(TOKENS)).logits.numpy()
    model.save_pretrained(tmp_path, safe_serialization=True)
    config, params = load_hf_checkpoint(tmp_path)
    got = np.asarray(_forward(config, params, jnp.asarray(TOKENS, jnp.int32)))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
