import json
import shutil

import pytest
import torch

from mpafer.backbone import BackboneConfig, load_backbone, save_model_folder
from mpafer.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from mpafer.model import MPAFERConfig, create_model
from mpafer.prototypes import compute_prototypes


def trained(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.learnable_parameters().values():
            param.add_(torch.randn_like(param))
    compute_prototypes(model, [(torch.randn(16, 3, 32, 32), torch.arange(16) % 8)], progress=False)
    return model.eval()


def test_round_trip_gives_identical_logits(tiny_model, tmp_path):
    model = trained(tiny_model)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
    save_checkpoint(model, tmp_path / "ck", extra={"epoch": 3})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["mpafer.json", "mpafer.safetensors"]
    loaded = load_checkpoint(tmp_path / "ck" / "mpafer.json")
    with torch.no_grad():
        after = loaded(images)
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.maps, after.maps)
    assert torch.equal(loaded.prototypes, model.prototypes)
    assert torch.equal(loaded.hard_text_cache, model.hard_text_features())
    meta = read_metadata(tmp_path / "ck")
    assert meta["backbone"]["fingerprint"] == model.backbone_info.fingerprint
    assert meta["extra"] == {"epoch": 3} and meta["num_learnable"] == model.num_learnable()


def test_mismatched_backbone_names_both(tiny_model, tmp_path):
    save_checkpoint(trained(tiny_model), tmp_path / "ck")
    other = load_backbone(BackboneConfig("mpafer-tiny", seed=7))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "ck", backbone=other)
    message = str(err.value)
    assert "trained on backbone mpafer-tiny" in message
    assert tiny_model.backbone_info.fingerprint in message and other.fingerprint in message


def test_corrupted_and_missing_files_give_clear_errors(tiny_model, tmp_path):
    folder = save_checkpoint(trained(tiny_model), tmp_path / "ck")
    data = (folder / "mpafer.safetensors").read_bytes()
    (folder / "mpafer.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(folder)
    (folder / "mpafer.safetensors").write_bytes(b"\x80\x04not a tensor file")  # a pickle header
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        load_checkpoint(folder)
    (folder / "mpafer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(folder)
    (folder / "mpafer.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an mpafer checkpoint"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (folder / "mpafer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no mpafer.safetensors"):
        load_checkpoint(folder)


def test_config_that_disagrees_with_the_tensors(tiny_model, tmp_path):
    folder = save_checkpoint(trained(tiny_model), tmp_path / "ck")
    meta = json.loads((folder / "mpafer.json").read_text())
    meta["config"]["n_ctx"] = 7
    (folder / "mpafer.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="text_prompts.ctx has shape"):
        load_checkpoint(folder)


def test_bundled_local_backbone_travels_with_the_checkpoint(tmp_path):
    import open_clip

    source = load_backbone(BackboneConfig("mpafer-tiny", seed=5))
    bundle = tmp_path / "bundle"
    save_model_folder(source.model, open_clip.get_model_config("mpafer-tiny"), bundle / "backbone")
    model = trained(create_model(MPAFERConfig(backbone=BackboneConfig(f"local-dir:{bundle / 'backbone'}"), topk=4)))
    save_checkpoint(model, bundle)
    assert read_metadata(bundle)["backbone"]["model_name"] == "local-dir:backbone"
    moved = tmp_path / "elsewhere"
    shutil.move(str(bundle), str(moved))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(moved)(images).logits, model(images).logits)


def test_text_anchor_round_trips_and_a_missing_offset_is_named(tiny_config, tmp_path):
    tiny_config.text_anchor = True
    model = trained(create_model(tiny_config))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images).logits
    folder = save_checkpoint(model, tmp_path / "ck")
    loaded = load_checkpoint(folder)
    assert torch.equal(loaded.text_anchor_offset, model.text_anchor_offset)
    with torch.no_grad():
        assert torch.equal(loaded(images).logits, before)
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(folder / "mpafer.safetensors"))
    del tensors["text_anchor_offset"]
    save_file(tensors, str(folder / "mpafer.safetensors"))
    with pytest.raises(CheckpointError, match="text_anchor_offset"):
        load_checkpoint(folder)
