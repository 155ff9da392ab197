"""The bundled default model itself (assets/models/mpafer-ferplus-default): what a user gets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mpafer.defaults import default_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "assets" / "models" / "mpafer-ferplus-default"

pytestmark = pytest.mark.skipif(not (BUNDLE / "mpafer.json").is_file(), reason="no bundled default model")


@pytest.fixture(scope="module")
def predictor():
    from mpafer.predictor import Predictor

    torch.set_num_threads(1)
    p = Predictor()
    yield p
    p.close()


def test_is_the_default_and_is_trained(predictor):
    assert Path(default_checkpoint()).resolve() == BUNDLE.resolve()
    assert not predictor.untrained


def test_reads_the_smiling_astronaut_as_happiness(predictor):
    faces = predictor.predict(ROOT / "assets" / "examples" / "astronaut.jpg", explain=False)
    assert len(faces) == 1
    top = max(faces[0].probabilities, key=faces[0].probabilities.get)
    assert top == "happiness", faces[0].probabilities


def test_bundle_is_small_and_records_its_protocol_and_text_tower():
    size = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    assert size < 15e6, f"bundle is {size / 1e6:.1f} MB (limit 15)"
    meta = json.loads((BUNDLE / "mpafer.json").read_text())
    assert set(meta["config"]["input"]) >= {"grey", "margin", "shift_y", "tta_flip"}
    assert meta["config"]["generic_direction_out"]  # what its paraphrase result rests on
    backbone = json.loads((BUNDLE / "backbone" / "open_clip_config.json").read_text())["model_cfg"]
    assert backbone["mpafer_text_sha256"] == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    assert (BUNDLE / "README.md").is_file() and (BUNDLE / "confusion.png").is_file()
