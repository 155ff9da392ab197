"""demo/app.py as Hugging Face Spaces and `gradio demo/app.py` read it: a module-level `demo`,
built only when asked for, so importing the module (as the tests do) stays cheap and offline."""
import json
import os
import subprocess
import sys

from conftest import REPO

PROBE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
start = time.perf_counter()
import demo.app as app
imported = time.perf_counter() - start
report = {"import_s": imported, "heavy": sorted(m for m in ("torch", "gradio", "mpafer.model") if m in sys.modules),
          "built_at_import": "demo" in vars(app)}
import gradio as gr
built = app.demo
report["blocks"] = isinstance(built, gr.Blocks)
report["kept"] = vars(app).get("demo") is built and app.demo is built  # a real global now, built once
report["untrained_banner"] = "untrained-banner" in json.dumps(built.config, default=str)
try:
    app.no_such_name
except AttributeError:
    report["attribute_error"] = True
print(json.dumps(report))
"""


def test_module_level_demo_is_built_on_first_access_only(tmp_path):
    env = {**os.environ, "MPAFER_CHECKPOINT": "untrained", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", PROBE, str(REPO)], capture_output=True, text=True, env=env,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [] and not report["built_at_import"]  # no torch, gradio or model on import
    assert report["import_s"] < 1.0
    assert report["blocks"] and report["kept"] and report["untrained_banner"] and report["attribute_error"]


def test_checkpoint_flag_defaults_to_the_environment(monkeypatch):
    sys.path.insert(0, str(REPO))
    from demo.app import parse_args

    monkeypatch.delenv("MPAFER_CHECKPOINT", raising=False)
    assert parse_args([]).checkpoint is None  # the bundled model
    monkeypatch.setenv("MPAFER_CHECKPOINT", "untrained")
    assert parse_args([]).checkpoint == "untrained" and parse_args(["--checkpoint", "x"]).checkpoint == "x"


def test_model_line_shows_no_host_directories(tmp_path):
    from types import SimpleNamespace

    sys.path.insert(0, str(REPO))
    from demo.app import model_label

    bundled = SimpleNamespace(untrained=False, source=str(REPO / "assets" / "models" / "mpafer-ferplus-default"))
    elsewhere = SimpleNamespace(untrained=False, source=str(tmp_path / "runs" / "my-model"))
    untrained = SimpleNamespace(untrained=True, source="untrained fallback (mpafer-tiny-face, random weights)")
    assert model_label(bundled) == "assets/models/mpafer-ferplus-default"
    assert model_label(elsewhere) == "my-model"
    assert model_label(untrained) == untrained.source
