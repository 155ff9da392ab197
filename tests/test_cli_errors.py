"""Mistakes a user makes on the command line: one clear line, exit status 2, no stack trace,
and (where it can be known) before any model is loaded."""
import json
import socket
import subprocess
import sys
import time

import pytest
from PIL import Image

from conftest import ASTRONAUT, REPO
from fakes import make_ferplus_pack


def one_line_error(captured, *words):
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    for word in words:
        assert word in captured.err, (word, captured.err)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything tries to build a predictor or load a model."""
    import mpafer.predictor

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(mpafer.predictor, "resolve_model", refuse)
    monkeypatch.setattr(mpafer.predictor.Predictor, "__init__", refuse)


def test_unknown_command_is_named(capsys):
    from mpafer.__main__ import main

    assert main(["bogus"]) == 2
    captured = capsys.readouterr()
    one_line_error(captured, "unknown command 'bogus'", "evaluate", "predict")
    assert captured.out == ""
    assert main(["--help"]) == 0 and "predict" in capsys.readouterr().out
    assert main([]) == 0 and "mpafer <command>" in capsys.readouterr().out


def test_unknown_command_through_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "mpafer", "bogus"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: unknown command 'bogus'") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_max_faces_below_one_is_refused_before_the_model_loads(value, no_model, capsys):
    from mpafer.cli_predict import main

    with pytest.raises(SystemExit) as stop:
        main([str(ASTRONAUT), "--max-faces", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--max-faces" in err and "Traceback" not in err
    assert ("must be at least 1" in err) if value != "many" else ("whole number" in err)


def test_a_one_pixel_image_is_too_small(tmp_path, no_model, capsys):
    from mpafer.cli_predict import main

    dot = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(dot)
    assert main([str(dot)]) == 2
    one_line_error(capsys.readouterr(), "too small", "1x1 pixels")


@pytest.mark.parametrize("width,height", [(13000, 12000), (40000, 40000)])
def test_a_decompression_bomb_is_refused_in_plain_words(width, height, tmp_path, no_model, capsys):
    from test_images import png_header_only

    from mpafer.cli_predict import main

    bomb = tmp_path / "huge.png"
    bomb.write_bytes(png_header_only(width, height))
    assert main([str(bomb)]) == 2
    captured = capsys.readouterr()
    one_line_error(captured, "too large to open safely", "megapixels", "150 megapixels allowed", "smaller copy")
    words = captured.err.replace(str(bomb), "")
    assert "DOS" not in words and "bomb" not in words and str(bomb) in captured.err  # the file is named


def test_evaluate_checkpoint_untrained_behaves_like_predict(tmp_path, capsys):
    from mpafer.cli_evaluate import UNTRAINED_WARNING, main

    pack = make_ferplus_pack(tmp_path / "pack", per_class={"train": 1, "valid": 1, "test": 1})
    common = ["--data", str(pack), "--split", "test", "--checkpoint", "untrained", "--device", "cpu",
              "--cache-dir", str(tmp_path / "cache")]
    assert main([*common, "--json"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert metrics["untrained"] is True and metrics["n"] == 8 and "random weights" in metrics["checkpoint"]
    assert UNTRAINED_WARNING in captured.err
    assert main(common) == 0
    table = capsys.readouterr().out
    assert table.startswith("WARNING: untrained model") and "accuracy" in table


def test_demo_port_in_use_is_one_line_that_names_the_option(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        result = subprocess.run([sys.executable, str(REPO / "demo" / "app.py"), "--port", str(port),
                                 "--checkpoint", "untrained"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120)
        seconds = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: port {port} is already in use") and result.stderr.count("\n") == 1
    assert "--port" in result.stderr and "Traceback" not in result.stderr
    assert seconds < 20  # said before the model (or even gradio) is loaded
    assert not list(tmp_path.iterdir())  # no temp folder made, nothing written


def test_demo_port_out_of_range(capsys):
    sys.path.insert(0, str(REPO))
    from demo.app import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--port", "70000"])
    assert "1 to 65535" in capsys.readouterr().err
