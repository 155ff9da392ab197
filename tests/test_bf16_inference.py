"""The bfloat16 image-tower copy for CPU inference: the model's own function to bf16 rounding, following
the model's weights, with and without oneDNN's prepacked operators."""
import pytest
import torch
from PIL import Image
from torch import nn

from mpafer import bf16_inference
from mpafer.backbone import BackboneConfig
from mpafer.bf16_inference import Bf16ImageTower, PackedConv2d, PackedLinear, packed_stem, prepacked_ops
from mpafer.model import MPAFERConfig, create_model
from mpafer.stems import vgg_stem


def randomise_batch_norms(module: nn.Module) -> None:
    """Running statistics far from (0, 1), so that a wrong fold shows."""
    generator = torch.Generator().manual_seed(1)
    for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator) * 0.3)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
        bn.bias.data.copy_(torch.randn(bn.num_features, generator=generator) * 0.1)


@pytest.fixture
def model():
    torch.manual_seed(0)
    model = create_model(MPAFERConfig(backbone=BackboneConfig("mpafer-tiny-stem"), topk=4, visual_prompt_tokens=2,
                                      visual_prompt_depth=-1, n_ctx=4)).eval()
    randomise_batch_norms(model)
    return model


@pytest.fixture(params=["packed", "plain"])
def packing(request, monkeypatch):
    if request.param == "packed" and not prepacked_ops():
        pytest.skip("this torch has no oneDNN prepacked operators")
    if request.param == "plain":
        monkeypatch.setattr(bf16_inference, "prepacked_ops", lambda: False)
    return request.param


def faces(n: int = 3, size: int = 48) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


def test_the_tower_is_the_model_to_bf16_rounding(model, packing):
    tower = Bf16ImageTower(model)
    x = faces()
    with torch.no_grad():
        exact, ours = model(x, with_text_tokens=False), tower(x)
    visual = tower._copies()[0]
    packed = [c for c in visual.modules() if isinstance(c, (PackedConv2d, PackedLinear))]
    assert packed and all(c.packed == (packing == "packed") for c in packed)
    assert sum(isinstance(c, PackedConv2d) for c in visual.modules()) == 4  # 3 stride-2 conv-BN-ReLU, the 1x1
    for name in ("logits", "maps", "image_features", "patch_features", "probabilities"):
        assert getattr(ours, name).dtype == torch.float32, name  # scored and handed on in float32
    torch.testing.assert_close(ours.probabilities, exact.probabilities, atol=0.02, rtol=0)
    torch.testing.assert_close(ours.patch_features, exact.patch_features, atol=0.05, rtol=0)
    assert torch.corrcoef(torch.stack([ours.maps.flatten(), exact.maps.flatten()]))[0, 1] > 0.99


def test_a_vgg_stem_packs_each_convolution_with_its_relu(packing):
    torch.manual_seed(0)
    stem = vgg_stem(32, 4, widths=[8, 16, 32], depths=[1, 1, 2]).eval()
    randomise_batch_norms(stem)
    packed = packed_stem(stem)
    kinds = [type(m).__name__ for m in packed]
    assert kinds == ["PackedConv2d", "MaxPool2d", "PackedConv2d", "MaxPool2d", "PackedConv2d", "PackedConv2d",
                     "PackedConv2d"]
    assert [m.relu for m in packed if isinstance(m, PackedConv2d)] == [True, True, True, True, False]
    x = faces(2)
    with torch.no_grad():
        exact, ours = stem(x), packed(x.bfloat16())
    assert ours.dtype == torch.bfloat16 and ours.shape == exact.shape
    assert (ours.float() - exact).abs().max() < 0.05 * exact.abs().max()
    assert all(p.dtype == torch.float32 for p in stem.parameters())  # the source stem is untouched


def test_the_copy_follows_the_models_weights(model):
    tower = Bf16ImageTower(model)
    x = faces()
    with torch.no_grad():
        before = tower(x).probabilities
        first = tower._copies()[0]
        assert tower._copies()[0] is first  # unchanged weights: the same copy
        model.clip.visual.conv1[0].weight.mul_(-1.5)  # an in-place step
        after, exact = tower(x).probabilities, model(x).probabilities
    assert tower._copies()[0] is not first
    assert (after - before).abs().max() > 0.01
    torch.testing.assert_close(after, exact, atol=0.02, rtol=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.visual_prompts.parameters()).zero_()  # the visual prompts are watched too
        torch.testing.assert_close(tower(x).probabilities, model(x).probabilities, atol=0.02, rtol=0)
        model.load_state_dict(state)  # a checkpoint loaded into the model
        torch.testing.assert_close(tower(x).probabilities, after, atol=1e-6, rtol=0)


def test_the_model_keeps_its_float32_weights_and_state(model):
    keys = list(model.state_dict())
    tower = Bf16ImageTower(model)
    with torch.inference_mode():  # as evaluation runs it
        tower(faces())
    with torch.no_grad():
        tower(faces())  # a copy made under inference_mode is still usable outside it
    assert list(model.state_dict()) == keys
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_forward_takes_the_copy_as_its_image_encoder(model):
    tower = Bf16ImageTower(model)
    x = faces(2)
    with torch.no_grad():
        direct = model(x, with_text_tokens=False, image_encoder=tower.encode_image)
        torch.testing.assert_close(direct.logits, tower(x).logits)


def test_gelu_is_fused_into_the_first_mlp_layer_and_matches(packing):
    torch.manual_seed(0)
    layer = nn.Linear(16, 32)
    fused = PackedLinear.of(layer.to(torch.bfloat16), gelu="none")
    x = torch.randn(2, 5, 16).bfloat16()
    with torch.no_grad():
        expected = nn.functional.gelu(layer(x).float())
        torch.testing.assert_close(fused(x).float(), expected, atol=0.05, rtol=0.02)


def test_evaluation_runs_the_pass_the_predictor_runs(model, monkeypatch):
    """bf16 on a CPU: the same copy behind evaluate's --precision bf16 and Predictor's auto."""
    import mpafer.precision
    from mpafer.evaluate import predict_probabilities
    from mpafer.predictor import Predictor

    monkeypatch.setattr(mpafer.precision, "_native_bf16", lambda kind: True)
    pixels = torch.randint(0, 256, (3, 48, 48, 3), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    model.config.input.tta_flip = True
    evaluated = predict_probabilities(model, pixels.numpy(), precision="bf16", progress=False)
    predictor = Predictor(model, detector=object())  # crops only: no detector is used
    assert predictor.precision == "bf16" and predictor.bf16_tower is not None
    batch = predictor.preprocess([Image.fromarray(p.numpy()) for p in pixels])
    _, predicted = predictor.forward(batch)
    torch.testing.assert_close(evaluated, predicted, atol=2e-3, rtol=0)
    exact = predict_probabilities(model, pixels.numpy(), precision="fp32", progress=False)
    assert (evaluated - exact).abs().max() < 0.02


def test_a_plain_vits_patchify_convolution_is_packed(packing):
    torch.manual_seed(0)
    model = create_model(MPAFERConfig(backbone=BackboneConfig("mpafer-tiny"), topk=4, visual_prompt_tokens=2,
                                      visual_prompt_depth=-1, n_ctx=4)).eval()
    tower = Bf16ImageTower(model)
    x = faces(2, model.image_size)
    with torch.no_grad():
        torch.testing.assert_close(tower(x).probabilities, model(x).probabilities, atol=0.02, rtol=0)
    assert isinstance(tower._copies()[0].conv1, PackedConv2d)
