import subprocess
import sys
import time

import pytest
import torch

from mpafer.backbone import BackboneConfig, BackboneError, load_backbone, save_model_folder


def test_tiny_backbone_is_frozen_and_in_eval_mode():
    backbone = load_backbone("mpafer-tiny")
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert not backbone.model.training
    assert backbone.image_size == 32
    assert len(backbone.fingerprint) == 16


def test_random_init_is_reproducible_and_seeded():
    a, b = load_backbone("mpafer-tiny"), load_backbone("mpafer-tiny")
    c = load_backbone(BackboneConfig("mpafer-tiny", seed=1))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    state = torch.get_rng_state()
    load_backbone("mpafer-tiny")
    assert torch.equal(state, torch.get_rng_state()), "building a backbone must not disturb the caller's RNG"


def test_local_folder_and_weights_file_give_the_same_weights(tmp_path):
    source = load_backbone(BackboneConfig("mpafer-tiny", seed=3))
    folder = save_model_folder(source.model, {**__import__("open_clip").get_model_config("mpafer-tiny")}, tmp_path / "tiny")
    from_folder = load_backbone(f"local-dir:{folder}")
    from_file = load_backbone(BackboneConfig("mpafer-tiny", pretrained=str(folder / "open_clip_model.safetensors")))
    assert from_folder.fingerprint == from_file.fingerprint == source.fingerprint


def test_conv_stem_config_keeps_the_token_grid():
    backbone = load_backbone("mpafer-tiny-stem")
    visual = backbone.model.visual
    assert isinstance(visual.conv1, torch.nn.Sequential)
    with torch.no_grad():
        out = visual.conv1(torch.randn(1, 3, 48, 48))
    assert out.shape == (1, 32, 6, 6) and tuple(visual.grid_size) == (6, 6)


def test_bad_sources_give_clear_errors(tmp_path):
    with pytest.raises(BackboneError, match="unknown open_clip model 'no-such-model'"):
        load_backbone("no-such-model")
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(BackboneConfig("mpafer-tiny", pretrained=str(tmp_path / "missing.safetensors")))
    with pytest.raises(BackboneError, match="no open_clip_config.json"):
        load_backbone(f"local-dir:{tmp_path}")
    with pytest.raises(BackboneError, match="neither a pretrained tag"):
        load_backbone(BackboneConfig("ViT-B-16", pretrained="no-such-tag"))


def test_weights_from_another_architecture_are_refused(tmp_path):
    other = load_backbone("mpafer-tiny-stem")
    import open_clip
    folder = save_model_folder(other.model, open_clip.get_model_config("mpafer-tiny-stem"), tmp_path / "stem")
    with pytest.raises(BackboneError, match="cannot load weights"):
        load_backbone(BackboneConfig("mpafer-tiny", pretrained=str(folder / "open_clip_model.safetensors")))


@pytest.mark.parametrize("source", [("ViT-B-16", "openai"), ("hf-hub:timm/ViT-B-16-SigLIP", None)])
def test_pretrained_weights_fail_fast_offline(source, tmp_path):
    """A fresh interpreter with HF_HUB_OFFLINE=1 and an empty cache must fail in under 2 s of work."""
    name, tag = source
    code = (
        "import time, sys\n"
        "from mpafer.backbone import BackboneConfig, BackboneError, load_backbone\n"
        "start = time.perf_counter()\n"
        f"try:\n    load_backbone(BackboneConfig({name!r}, pretrained={tag!r}, cache_dir={str(tmp_path)!r}))\n"
        "except BackboneError as err:\n    print(f'{time.perf_counter() - start:.3f}'); print(err); sys.exit(3)\n"
    )
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 3, result.stderr
    seconds, message = result.stdout.split("\n", 1)
    assert float(seconds) < 2.0
    assert name in message and ("HF_HUB_OFFLINE" in message or "offline" in message)
    assert "pretrained" in message or "local-dir:" in message  # says how to supply the weights


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch, tmp_path):
    import mpafer.offline_weights as offline_weights

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(offline_weights, "hub_reachable", lambda *a, **k: False)
    start = time.perf_counter()
    with pytest.raises(BackboneError, match="cannot be reached"):
        load_backbone(BackboneConfig("ViT-B-16", pretrained="openai", cache_dir=str(tmp_path)))
    assert time.perf_counter() - start < 2.0


def test_vit_b16_random_weights_runs_a_prompted_forward():
    from mpafer.model import MPAFERConfig, create_model

    model = create_model(MPAFERConfig(backbone=BackboneConfig("ViT-B-16")))
    # paper: about 0.22 MB of learnable parameters for ViT-B/16
    assert model.num_learnable() == 10 * 512 + 8 * 8 * 768
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.logits.shape == (2, 8) and out.maps.shape == (2, 8, 14, 14)
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("kind,stride,size", [("resnet", 4, 56), ("resnet", 8, 112), ("conv", 8, 48), ("conv", 4, 32)])
def test_stems_have_the_patch_stride(kind, stride, size):
    from mpafer.stems import build_stem

    stem = build_stem({"type": kind}, out_channels=24, stride=stride)
    with torch.no_grad():
        out = stem.eval()(torch.randn(1, 3, size, size))
    assert out.shape == (1, 24, size // stride, size // stride)


def test_vgg_stem_depths_set_the_convolutions_per_stage_and_keep_the_default_layout():
    from mpafer.stems import build_stem

    def convs_per_stage(stem):
        counts = [0]
        for module in stem[:-1]:  # the last module is the 1x1 projection
            if isinstance(module, torch.nn.MaxPool2d):
                counts.append(0)
            counts[-1] += isinstance(module, torch.nn.Conv2d)
        return counts

    default = build_stem({"type": "vgg", "widths": [8, 16, 24]}, out_channels=12, stride=4)
    deep = build_stem({"type": "vgg", "widths": [8, 16, 24], "depths": [1, 2, 4]}, out_channels=12, stride=4)
    assert convs_per_stage(default) == [2, 2, 2] and convs_per_stage(deep) == [1, 2, 4]
    # two per stage is the layout older checkpoints were saved with: same state-dict keys
    explicit = build_stem({"type": "vgg", "widths": [8, 16, 24], "depths": [2, 2, 2]}, out_channels=12, stride=4)
    assert list(explicit.state_dict()) == list(default.state_dict())
    with torch.no_grad():
        assert deep.eval()(torch.randn(1, 3, 48, 48)).shape == (1, 12, 12, 12)
    for bad in ([2, 2], [2, 0, 2]):
        with pytest.raises(ValueError, match="depths"):
            build_stem({"type": "vgg", "depths": bad}, out_channels=12, stride=4)


def test_shipped_default_model_configs_fit_the_bundle_budget():
    """The compact stage-0 backbones keep a >= 14x14 token grid and stay under 25 MB in float16."""
    for name in ("mpafer-face-vit", "mpafer-face-vit-small"):
        backbone = load_backbone(name)
        assert min(backbone.model.visual.grid_size) >= 14
        megabytes = sum(p.numel() for p in backbone.model.state_dict().values()) * 2 / 1e6
        assert megabytes < 25, (name, megabytes)


@pytest.mark.parametrize("kind,stride", [("vgg", 4), ("resnet", 8), ("conv", 8)])
def test_stem_inference_with_folded_batch_norms_matches_the_module_and_follows_its_weights(kind, stride):
    """Eval without autograd runs the folded, channels-last convolutions; Grad-CAM's path (grad on)
    and training run the modules. Same outputs, and a changed statistic is picked up."""
    from mpafer.stems import build_stem

    torch.manual_seed(0)
    stem = build_stem({"type": kind}, out_channels=24, stride=stride)
    with torch.no_grad():  # non-trivial statistics, as after training
        for module in stem.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.2, 0.2)
    stem.eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.enable_grad():
        reference = stem(x)  # the modules themselves (autograd on)
    with torch.no_grad():
        folded = stem(x)
    assert "_folded_cache" in stem.__dict__
    assert torch.allclose(folded, reference, atol=1e-4, rtol=1e-4)
    batch_norm = next(m for m in stem if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        batch_norm.running_mean.add_(1.0)  # an optimiser step or a load changes it in place
        changed = stem(x)
    with torch.enable_grad():
        assert torch.allclose(changed, stem(x), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(changed, folded, atol=1e-3)
    assert not any("folded" in name for name in stem.state_dict())  # nothing new is saved


def test_stem_inference_cache_is_dropped_on_loads_moves_copies_and_mode_switches():
    import copy

    from mpafer.stems import build_stem

    torch.manual_seed(0)
    stem = build_stem({"type": "vgg"}, out_channels=24, stride=4).eval()
    other = build_stem({"type": "vgg"}, out_channels=24, stride=4).eval()
    x = torch.randn(1, 3, 48, 48)

    def cached(module) -> bool:
        with torch.no_grad():
            module(x)
        return "_folded_cache" in module.__dict__

    assert cached(stem) and "_folded_cache" not in copy.deepcopy(stem).__dict__
    with torch.no_grad():
        stem.load_state_dict(other.state_dict())  # copy_ in place: the cache must not survive it
        assert torch.allclose(stem(x), other(x), atol=1e-5)
    for switch in (lambda m: m.train().eval(), lambda m: m.double().float()):
        assert cached(stem)
        switch(stem)
        assert "_folded_cache" not in stem.__dict__
    with torch.inference_mode():  # weights made under inference_mode have no version counter: modules run
        built = build_stem({"type": "vgg"}, out_channels=24, stride=4).eval()
        assert built(x).shape == (1, 24, 12, 12) and "_folded_cache" not in built.__dict__


def test_deep_stem_config_keeps_the_default_token_grid_and_moves_a_block_into_convolutions():
    """mpafer-face-minilm-deepstem: the default's 12x12 grid at 48 px, 4 convs at 12x12, one block fewer."""
    import open_clip

    from mpafer.stems import build_stem

    default, deep = (open_clip.get_model_config(n) for n in ("mpafer-face-minilm", "mpafer-face-minilm-deepstem"))
    assert deep["text_cfg"] == default["text_cfg"] and deep["embed_dim"] == default["embed_dim"]
    assert deep["vision_cfg"]["layers"] == default["vision_cfg"]["layers"] - 1
    vision = deep["vision_cfg"]
    stem = build_stem(deep["mpafer_stem"], out_channels=vision["width"], stride=vision["patch_size"]).eval()
    with torch.no_grad():
        grid = stem(torch.randn(1, 3, vision["image_size"], vision["image_size"])).shape[-2:]
    assert tuple(grid) == (12, 12)
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in stem) == 8
