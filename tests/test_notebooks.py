"""The Colab notebooks in colab/ run top to bottom on CPU at their default (tiny) sizes.

Each notebook is executed in a fresh IPython kernel (nbclient + ipykernel) whose working
directory is the repository root, with the working tree on PYTHONPATH (so the notebooks'
install cell finds ``decoding`` and ``retrieval`` importable and skips ``pip install``),
8 virtual CPU devices (the mesh cells split batches over them) and matplotlib's non-interactive
Agg backend. A cell that raises fails the test with the cell's traceback; the notebooks assert
their own claims (speculative greedy output == greedy output, constrained recall >= the
popularity baseline, ...), so an output the narrative contradicts fails it too.

The notebooks are generated from ``scripts/notebooks/*.py`` by ``scripts/make_colab.py``; the
committed files must match the generator and carry no outputs.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = sorted(path.name for path in COLAB.glob("*.ipynb"))
STEMS = ("quickstart", "speculative_decoding", "generative_retrieval")  # scripts/notebooks/<stem>.py
CELL_TIMEOUT_S = 600
# Extra XLA flags of a notebook's kernel. The quickstart is compile-bound: a dozen small
# programs, each run once or twice, and XLA's backend compile is about 80% of its time; at LLVM
# -O0 they compile about 45% faster (as a plain script on 2 CPU cores: backend compile 20.5 s ->
# 11.0 s, wall 25 s -> 15.5 s; this test about 20 s), which keeps it within the suite's budget.
# Its assertions hold at either level (both were run).
EXTRA_XLA_FLAGS = {"quickstart.ipynb": ("--xla_backend_optimization_level=0",)}


def kernel_env(tmp_path: pathlib.Path, extra_xla_flags: tuple[str, ...] = ()) -> dict[str, str]:
    """The kernel's environment: this one plus the working tree, 8 CPU devices (and
    ``extra_xla_flags``), Agg, a private TMPDIR."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["XLA_FLAGS"] = " ".join(
        [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
        + ["--xla_force_host_platform_device_count=8", *extra_xla_flags]
    )
    env["JAX_PLATFORMS"] = "cpu"
    env["MPLBACKEND"] = "Agg"
    env["TMPDIR"] = str(tmp_path)  # the notebooks' tempfile.mkdtemp work folders land here
    env.pop("JPY_PARENT_PID", None)
    return env


def execute(path: pathlib.Path, tmp_path: pathlib.Path):
    """Runs every cell of the notebook at ``path``; returns the executed notebook."""
    import nbclient  # the test extra's notebook runners (pyproject.toml)
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},  # the kernel's working directory
    )
    client.execute(env=kernel_env(tmp_path, EXTRA_XLA_FLAGS.get(path.name, ())))
    return notebook


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path):
    notebook = execute(COLAB / name, tmp_path)
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors  # nbclient raises on the first error; this guards allow_errors cells


def test_every_notebook_has_a_source():
    assert set(NOTEBOOKS) == {f"{stem}.ipynb" for stem in STEMS}
    assert all((ROOT / "scripts" / "notebooks" / f"{stem}.py").exists() for stem in STEMS)


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_matches_its_source_and_has_no_outputs(stem):
    """colab/<stem>.ipynb is what scripts/make_colab.py writes from scripts/notebooks/<stem>.py."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_colab

    committed = (COLAB / f"{stem}.ipynb").read_text()
    assert committed == make_colab.render(stem), f"run: python scripts/make_colab.py --notebook {stem}"
    cells = json.loads(committed)["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")
    install = "".join(cells[1]["source"])
    assert 'REPO_URL = "https://github.com/jax-decoding/jax-decoding"' in install and 'git+{REPO_URL}' in install
    scale_up = [c for c in cells if c["cell_type"] == "code" and "# ---- Scale up" in "".join(c["source"])]
    assert len(scale_up) == 1, "exactly one 'Scale up' cell holds the size knobs"
