"""README's Python blocks run as written: offline, from the repository root, on the bundled model."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "assets" / "models" / "mpafer-ferplus-default"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_readme_has_a_library_example():
    assert python_blocks((ROOT / "README.md").read_text()), "README lost its ```python example"


@pytest.mark.skipif(not BUNDLE.is_dir(), reason="the bundled default model is missing")
@pytest.mark.parametrize("index", range(len(python_blocks((ROOT / "README.md").read_text()))))
def test_readme_python_block_runs_offline(index, tmp_path):
    code = python_blocks((ROOT / "README.md").read_text())[index]
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("MPAFER_CHECKPOINT", None)  # the block promises the bundled default
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if "predict_crops" in code:  # the library block: its printed shapes are the ones its comments promise
        assert "torch.Size([1, 8]) torch.Size([1, 8, 12, 12])" in result.stdout, result.stdout
        assert re.search(r"^\d+ of \d+ faces$", result.stdout, flags=re.M), result.stdout
