"""Checkpoint files: library errors come back as one CheckpointError naming the file (and the
field or tensor), and a failed save cannot keep the process alive (issue 11)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest

from models import load_hf_checkpoint, restore_params, save_params
from models.checkpoint import CheckpointError
from test_models_hf import LLAMA, hf_tensors, write_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_failed_save_lets_the_process_exit_at_once(tmp_path):
    """Orbax's async checkpointer left threads waiting ~300 s after this error; the process
    must now exit within seconds of it (measured from the error, not from the slow imports)."""
    (tmp_path / "a_file").write_text("not a folder")
    script = textwrap.dedent(f"""
        import time
        import jax.numpy as jnp
        from models import save_params
        from models.checkpoint import CheckpointError
        for path, params in ((r"{tmp_path}/a_file/ckpt", {{"w": jnp.zeros(3)}}),
                             (r"{tmp_path}/ckpt", {{"w": object()}})):  # fails inside Orbax
            try:
                save_params(path, params)
            except CheckpointError as err:
                print("ERROR", err, flush=True)
        print("AT", time.time(), flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    ended = time.time()
    assert result.returncode == 0, result.stderr[-2000:]
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 2
    assert f"{tmp_path}/a_file" in errors[0] and "is not a folder" in errors[0]
    assert f"{tmp_path}/ckpt" in errors[1] and "Unsupported type" in errors[1]
    errored_at = float(next(line for line in result.stdout.splitlines() if line.startswith("AT")).split()[1])
    assert ended - errored_at < 10, f"the process lived {ended - errored_at:.0f} s after the error"


def test_truncated_orbax_checkpoint_names_the_path(tmp_path):
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}

    def cut_chunks(path):  # the array data (OCDBT chunks)
        chunks = [file for file in path.rglob("*") if file.is_file() and file.parent.name == "d"]
        assert chunks
        for file in chunks:
            file.write_bytes(file.read_bytes()[:7])

    def cut_metadata(path):  # the tree metadata (JSON)
        file = path / "_METADATA"
        file.write_bytes(file.read_bytes()[:40])

    for cut in (cut_chunks, cut_metadata):
        path = tmp_path / cut.__name__
        save_params(path, params)
        cut(path)
        for like in (params, None):
            with pytest.raises(CheckpointError, match=f"{path}( is corrupt or truncated|: cannot read)"):
                restore_params(path, like=like)
    with pytest.raises(CheckpointError) as err:
        restore_params(tmp_path / "cut_metadata")
    assert err.value.__cause__ is not None  # the library's own error, chained


@pytest.mark.parametrize(
    "config_text, message",
    [
        ("{not json", r"config.json: not valid JSON"),
        (json.dumps({**LLAMA, "hidden_size": "32"}), r"config.json: field 'hidden_size' must be an integer, got '32'"),
        (json.dumps({**LLAMA, "rms_norm_eps": "small"}), r"field 'rms_norm_eps' must be a finite number"),
        (json.dumps({**LLAMA, "rope_scaling": {"rope_type": "llama3", "factor": None, "low_freq_factor": 1,
                                               "high_freq_factor": 4, "original_max_position_embeddings": 8}}),
         r"field 'factor' must be a finite number"),
        (json.dumps([1, 2]), "expected a JSON object"),
    ],
)
def test_bad_config_json_names_the_file_and_field(tmp_path, config_text, message):
    (tmp_path / "config.json").write_text(config_text)
    with pytest.raises(CheckpointError, match=message) as err:
        load_hf_checkpoint(tmp_path)
    assert str(tmp_path / "config.json") in str(err.value)


def test_truncated_safetensors_and_bad_tensors_name_the_file(tmp_path):
    path = write_checkpoint(tmp_path / "hf", LLAMA, hf_tensors(LLAMA))
    weights = path / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match=f"{weights}: not a readable safetensors file") as err:
        load_hf_checkpoint(path)
    assert err.value.__cause__ is not None

    tensors = hf_tensors(LLAMA)
    tensors["model.layers.1.mlp.down_proj.weight"][0, 0] = np.nan
    path = write_checkpoint(tmp_path / "nan", LLAMA, tensors)
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.1.mlp.down_proj.weight' holds 1 NaN"):
        load_hf_checkpoint(path)

    (path / "model.safetensors.index.json").write_bytes(b"\xff\xfe binary")
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: not valid JSON"):
        load_hf_checkpoint(path)
