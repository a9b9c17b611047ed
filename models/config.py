"""Model configuration: a frozen, hashable dataclass, and named size presets.

A :class:`LlamaConfig` is a static argument everywhere (it is part of the hashable
:class:`models.Decoder`), so a new config recompiles; it never holds arrays.

Presets::

    config = preset("tiny")                        # tests: byte vocab, 2 layers, dim 64
    config = preset("small", dtype="bfloat16")     # any field can be overridden
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1+ frequency-dependent RoPE rescaling (Hugging Face ``rope_type="llama3"``).

    Low frequencies (wavelength above ``original_max_position / low_freq_factor``) are divided
    by ``factor``, high frequencies (wavelength below ``original_max_position /
    high_freq_factor``) are kept, and the band in between is interpolated smoothly.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position: int

    def __post_init__(self):
        numbers = (self.factor, self.low_freq_factor, self.high_freq_factor, self.original_max_position)
        if not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise ValueError(f"Llama3RopeScaling needs finite numbers, got {self}")
        if self.factor <= 0 or self.original_max_position <= 0:
            raise ValueError(f"Llama3RopeScaling needs factor > 0 and original_max_position > 0, got {self}")
        if not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(f"Llama3RopeScaling needs high_freq_factor > low_freq_factor, got {self}")

    def rescale(self, inv_freq: np.ndarray) -> np.ndarray:
        """Rescaled inverse frequencies; ``inv_freq``: float64 [head_dim // 2]."""
        wavelength = 2 * math.pi / inv_freq
        low_freq_wavelength = self.original_max_position / self.low_freq_factor
        high_freq_wavelength = self.original_max_position / self.high_freq_factor
        smooth = (self.original_max_position / wavelength - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        interpolated = (1 - smooth) * inv_freq / self.factor + smooth * inv_freq
        scaled = np.where(wavelength > low_freq_wavelength, inv_freq / self.factor, inv_freq)
        in_band = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
        return np.where(in_band, interpolated, scaled)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape and numerics of a Llama-family decoder (Llama, Qwen2, Mistral without a window).

    Attributes:
      vocab_size: number of token ids.
      dim: model (residual stream) width.
      n_layers: number of transformer blocks.
      n_heads: query heads.
      n_kv_heads: key/value heads; ``n_heads`` must be a multiple. Equal to ``n_heads`` is
        multi-head attention, 1 is multi-query attention. Key/value head ``j`` serves query
        heads ``j * g .. (j + 1) * g - 1`` with ``g = n_heads // n_kv_heads``.
      head_dim: width of one head (even, for RoPE).
      hidden_dim: SwiGLU MLP inner width.
      rope_theta: RoPE base.
      norm_eps: RMSNorm epsilon.
      tie_embeddings: the output head reuses the token embedding.
      attention_bias: the q/k/v projections have biases (Qwen2).
      rope_scaling: ``None`` or a :class:`Llama3RopeScaling`.
      sliding_window: ``None``, or the attention window of a Mistral/Qwen2 checkpoint. The
        window is not implemented: caches and sequences longer than it are rejected.
      param_dtype: dtype of the parameters.
      dtype: dtype of activations and of the KV cache (logits are always float32).
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    attention_bias: bool = False
    rope_scaling: Llama3RopeScaling | None = None
    sliding_window: int | None = None
    param_dtype: Any = jnp.float32
    dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
        for field in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"LlamaConfig.{field} must be a positive int, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"LlamaConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.head_dim}")
        finite = all(
            isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)
            for v in (self.rope_theta, self.norm_eps)
        )
        if not finite or self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError(
                f"LlamaConfig needs finite rope_theta > 0 and norm_eps > 0, got {self.rope_theta}, {self.norm_eps}"
            )
        window = self.sliding_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window <= 0):
            raise ValueError(f"LlamaConfig.sliding_window must be None or positive, got {self.sliding_window}")
        for field in ("param_dtype", "dtype"):
            if not jnp.issubdtype(getattr(self, field), jnp.floating):
                raise ValueError(f"LlamaConfig.{field} must be a floating dtype, got {getattr(self, field)}")

    @property
    def rope_inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies, float32 [head_dim // 2] (a compile-time constant)."""
        exponents = np.arange(0, self.head_dim, 2, dtype=np.int64).astype(np.float64) / self.head_dim
        inv_freq = 1.0 / (self.rope_theta**exponents)
        if self.rope_scaling is not None:
            inv_freq = self.rope_scaling.rescale(inv_freq)
        return inv_freq.astype(np.float32)

    def check_length(self, length: int, what: str) -> None:
        """Raises ValueError if ``length`` positions would need the (unimplemented) sliding window."""
        if self.sliding_window is not None and length > self.sliding_window:
            raise ValueError(
                f"{what} of {length} positions exceeds the sliding window ({self.sliding_window}); sliding-window "
                f"attention is not implemented, so use at most {self.sliding_window} positions"
            )


_BYTE_VOCAB = 256

PRESETS: dict[str, LlamaConfig] = {
    # Unit tests: grouped-query attention with 2 query heads per kv head.
    "tiny": LlamaConfig(
        vocab_size=_BYTE_VOCAB, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128
    ),
    # CPU speculative-decoding demo target (~3.3M parameters).
    "small": LlamaConfig(
        vocab_size=_BYTE_VOCAB, dim=256, n_layers=4, n_heads=8, n_kv_heads=4, head_dim=32, hidden_dim=768
    ),
    # CPU speculative-decoding benchmark target (~19.1M parameters, 76 MB in float32): larger than
    # a typical 32 MB L3 cache, so a decode step is memory-bound and verifying k + 1 tokens costs
    # about as much as decoding 1, as on accelerators.
    "medium": LlamaConfig(
        vocab_size=_BYTE_VOCAB, dim=512, n_layers=6, n_heads=8, n_kv_heads=4, head_dim=64, hidden_dim=1536
    ),
    # Draft model for "small" and "medium" (~0.4M parameters, same vocabulary).
    "draft": LlamaConfig(
        vocab_size=_BYTE_VOCAB, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, hidden_dim=384
    ),
    # Shapes of meta-llama/Llama-3.2-1B, for accelerator benchmarks.
    "llama-3.2-1b": LlamaConfig(
        vocab_size=128256,
        dim=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        hidden_dim=8192,
        rope_theta=500000.0,
        norm_eps=1e-5,
        tie_embeddings=True,
        rope_scaling=Llama3RopeScaling(
            factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192
        ),
        param_dtype=jnp.bfloat16,
        dtype=jnp.bfloat16,
    ),
    # Shapes of Qwen/Qwen2-0.5B, for accelerator benchmarks.
    "qwen2-0.5b": LlamaConfig(
        vocab_size=151936,
        dim=896,
        n_layers=24,
        n_heads=14,
        n_kv_heads=2,
        head_dim=64,
        hidden_dim=4864,
        rope_theta=1000000.0,
        norm_eps=1e-6,
        tie_embeddings=True,
        attention_bias=True,
        param_dtype=jnp.bfloat16,
        dtype=jnp.bfloat16,
    ),
}


def preset(name: str, **overrides: Any) -> LlamaConfig:
    """The preset ``name`` (a key of :data:`PRESETS`), with any fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
