"""The README's API tour runs as written: its ```python blocks are executed in order."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_an_api_tour():
    assert len(python_blocks(README.read_text())) >= 4


def test_readme_python_blocks_run():
    namespace: dict = {}
    for block in python_blocks(README.read_text()):
        exec(compile(block, str(README), "exec"), namespace)
    # The tour's own assertions ran; check the objects it promised exist with the shapes it printed.
    assert namespace["out"].tokens.shape == (2, 16)
    assert namespace["beams"].sequences.shape == (2, 8, 4)


def test_readme_commands_match_ci():
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = 'pip install -e ".[test]" && python -m pytest -q tests'
    assert test_command in README.read_text()
    assert test_command.replace('"', "") in ci.replace('"', "")


def test_readme_first_command_is_the_main_job():
    """Set-up command 1 installs and runs scripts/retrieve.py with no arguments (its code path is
    run_end_to_end, tested at small size in tests/test_retrieval_training.py)."""
    import sys

    text = README.read_text()
    assert "pip install -e . && python scripts/retrieve.py\n" in text
    sys.path.insert(0, str(README.parent / "scripts"))
    import retrieve

    args = retrieve.build_parser().parse_args([])
    assert args.run is None and args.dataset == "synthetic"  # no arguments: end to end on synthetic data

