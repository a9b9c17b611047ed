"""The README's first command runs: scripts/demo_decode.py decodes and retrieves catalogue items."""

import importlib.util
import pathlib
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "demo_decode.py"


def test_demo_decodes_and_retrieves_only_catalogue_items(capsys):
    spec = importlib.util.spec_from_file_location("demo_decode", SCRIPT)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.main(["--preset", "tiny", "--max-new-tokens", "4", "--num-beams", "3"])
    printed = capsys.readouterr().out
    assert "== greedy" in printed and "== sampled" in printed
    retrieved = [line for line in printed.splitlines() if line.startswith("[") and " -> " in line][-3:]
    assert len(retrieved) == len(demo.RETRIEVAL_PROMPTS)
    for line in retrieved:
        names = [item.rsplit(" (", 1)[0] for item in line.split(" -> ", 1)[1].split(", ")]
        assert len(names) == 3 and set(names) <= set(sys.stdlib_module_names)
    assert "every retrieved name is in the catalogue" in printed
