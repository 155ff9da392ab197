"""The compiled copies of the classifying forward (training/traced_forward.py, for the latency
benchmark) give the model's own outputs, at any batch size."""
from __future__ import annotations

import pytest
import torch

from mpafer.backbone import BackboneConfig
from mpafer.model import MPAFERConfig, create_model
from training import traced_forward
from training.traced_forward import CompiledForward, TracedForward


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(MPAFERConfig(backbone=BackboneConfig("mpafer-tiny-stem"))).eval()


@pytest.mark.parametrize("batch", [1, 3])
def test_traced_outputs_match_the_model(model, batch):
    traced = TracedForward(model)
    images = torch.randn(batch, 3, model.image_size, model.image_size)
    with torch.no_grad():
        expected = model(images, with_text_tokens=False)
    got = traced(images)
    for name in ("logits", "global_scores", "local_scores", "maps", "image_features", "patch_features"):
        assert getattr(got, name).shape == getattr(expected, name).shape, name
        assert torch.allclose(getattr(got, name), getattr(expected, name), atol=1e-5, rtol=0), name
    assert torch.allclose(got.probabilities, expected.probabilities, atol=1e-6)
    assert torch.equal(got.text.features, expected.text.features)


def test_a_training_model_or_text_tokens_are_refused(model):
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            TracedForward(model)
    finally:
        model.eval()
    traced = TracedForward(model)
    with pytest.raises(ValueError, match="text tokens"):
        traced(torch.randn(1, 3, model.image_size, model.image_size), with_text_tokens=True)


def test_a_copy_that_differs_from_the_model_is_refused(model, monkeypatch):
    def off_by_one(module):
        return lambda images: tuple(t + 1 for t in module(images))

    monkeypatch.setattr(traced_forward.torch.jit, "optimize_for_inference", off_by_one)
    with pytest.raises(RuntimeError, match="differs from the model"):
        TracedForward(model)


@pytest.mark.slow  # an Inductor compile: several seconds
def test_the_compiled_copy_matches_the_model_at_its_batch_size(model):
    compiled = CompiledForward(model, batch=2)
    images = torch.randn(2, 3, model.image_size, model.image_size)
    with torch.no_grad():
        expected = model(images, with_text_tokens=False)
    got = compiled(images)
    assert torch.allclose(got.logits, expected.logits, atol=1e-4, rtol=0)
    assert torch.allclose(got.maps, expected.maps, atol=1e-4, rtol=0)
