"""Grad-CAM through the grad-cam package, hooked where the global score can see it."""
import numpy as np
import pytest
import torch

from mpafer.backbone import BackboneConfig
from mpafer.explain import gradcam, gradcam_layer
from mpafer.model import MPAFERConfig, create_model
from mpafer.predictor import untrained_model


@pytest.fixture(scope="module")
def model():
    return untrained_model()  # 112 px, 14x14 grid


@pytest.fixture(scope="module")
def global_only():
    """The class-token score alone: no top-k patch term reaches the patches."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_model(MPAFERConfig(backbone=BackboneConfig("mpafer-tiny-face"), use_local=False)).eval()


def _images(model, n=2, seed=2):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, model.image_size, model.image_size, generator=generator)


def test_the_map_sees_the_global_score(global_only):
    images = _images(global_only)
    maps = gradcam(global_only, images, [0, 5])
    assert maps.shape == (2, global_only.image_size, global_only.image_size)
    assert (maps.reshape(2, -1).max(1) > 0.5).all() and (maps.reshape(2, -1).std(1) > 0.01).all()
    # the old hook, the last block's output, gets no gradient at the patches from the class token
    old = gradcam(global_only, images, [0, 5], layer=global_only.clip.visual.transformer.resblocks[-1])
    assert not old.any()


def test_the_map_depends_on_the_class(model, global_only):
    for m in (model, global_only):
        images = _images(m, n=1, seed=3)
        first, second = gradcam(m, images, [0])[0], gradcam(m, images, [3])[0]
        assert np.abs(first - second).mean() > 0.01


def test_the_hooked_layer_is_the_last_blocks_first_layernorm(model):
    assert gradcam_layer(model) is model.clip.visual.transformer.resblocks[-1].ln_1


def test_gradcam_runs_on_frozen_weights_and_leaves_no_trace(model):
    images = _images(model)
    layer = gradcam_layer(model)
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}
    learnable = list(model.learnable_parameters().values())
    kept = torch.full_like(learnable[0], 0.25)
    learnable[0].grad = kept.clone()  # e.g. mid-training: Grad-CAM must not touch it
    with torch.no_grad():
        logits = model(images).logits
    maps = gradcam(model, images, [0, 3])
    assert maps.shape == (2, model.image_size, model.image_size)
    assert maps.min() >= 0.0 and maps.max() <= 1.0 and maps.max() > 0.0
    assert not layer._forward_hooks  # hooks released
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads_before
    assert torch.equal(learnable[0].grad, kept)
    assert all(p.grad is None for p in learnable[1:])
    learnable[0].grad = None
    with torch.no_grad():
        assert torch.allclose(model(images).logits, logits)
    with pytest.raises(ValueError):
        gradcam(model, images, [0])
