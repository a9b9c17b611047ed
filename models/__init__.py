"""Llama-family decoder models for the decoding library (depends on nothing else in the project).

Public API::

    from models import LlamaConfig, preset, PRESETS, Decoder, KVCache, init_params, init_cache, forward
    from models import BeamKVCache, init_beam_cache, beam_cache_nbytes   # shared-prefix beam cache
    from models import load_hf_checkpoint, save_params, restore_params, CheckpointError
"""

from models.beam_cache import BeamKVCache, beam_cache_nbytes, init_beam_cache
from models.checkpoint import CheckpointError, restore_params, save_params
from models.config import PRESETS, Llama3RopeScaling, LlamaConfig, preset
from models.decoder import Decoder, KVCache, forward, init_cache, init_params
from models.hf_checkpoint import load_hf_checkpoint

__all__ = [
    "PRESETS",
    "BeamKVCache",
    "CheckpointError",
    "Decoder",
    "KVCache",
    "Llama3RopeScaling",
    "LlamaConfig",
    "beam_cache_nbytes",
    "forward",
    "init_beam_cache",
    "init_cache",
    "init_params",
    "load_hf_checkpoint",
    "preset",
    "restore_params",
    "save_params",
]
