import copy

import pytest
import torch

from mpafer.model import MPAFERConfig, create_model
from mpafer.objective import mpafer_loss
from mpafer.prototypes import compute_prototypes


def batch(n=4, size=32, classes=8):
    torch.manual_seed(0)
    return torch.randn(n, 3, size, size), torch.arange(n) % classes


def test_output_shapes_and_cgla_logits(tiny_model):
    images, _ = batch()
    with torch.no_grad():
        out = tiny_model.eval()(images)
    assert out.logits.shape == (4, 8)
    assert out.maps.shape == (4, 8, 4, 4)
    assert out.image_features.shape == (4, 32) and out.patch_features.shape == (4, 16, 32)
    # logits = scale * (S_g + mean of top-k patch cosines); recompute from the returned pieces
    sim = out.maps.flatten(2)
    local = sim.topk(4, dim=-1).values.mean(-1)
    glob = out.image_features @ out.text.features.t()
    torch.testing.assert_close(out.logits, tiny_model.logit_scale * (glob + local))
    torch.testing.assert_close(out.probabilities.sum(-1), torch.ones(4))


def test_gradients_reach_only_the_prompts_and_frozen_weights_stay_bit_identical(tiny_model):
    compute_prototypes(tiny_model, [batch(16)], progress=False)
    frozen = copy.deepcopy(tiny_model.clip.state_dict())
    learnable_before = {k: v.clone() for k, v in tiny_model.learnable_state_dict().items()}
    assert set(learnable_before) == {"text_prompts.ctx", "visual_prompts.prompts"}
    optimizer = torch.optim.AdamW(tiny_model.learnable_parameters().values(), lr=0.1, weight_decay=0.1)
    tiny_model.train()
    images, labels = batch()
    for _ in range(2):
        terms = mpafer_loss(tiny_model, tiny_model(images), labels)
        optimizer.zero_grad()
        terms["loss"].backward()
        for name, param in tiny_model.named_parameters():
            assert (param.grad is not None) == param.requires_grad, name
        optimizer.step()
    assert set(terms) == {"ce", "ta", "pa", "v", "loss"}
    for key, value in tiny_model.clip.state_dict().items():
        assert torch.equal(value, frozen[key]), f"frozen weight {key} changed"
    assert not tiny_model.clip.training, "the frozen encoders must stay in eval mode"
    for key, value in tiny_model.learnable_state_dict().items():
        assert not torch.equal(value, learnable_before[key]), f"{key} did not learn"


def test_cached_class_text_follows_optimiser_steps(tiny_model):
    tiny_model.eval()
    with torch.no_grad():
        first = tiny_model.class_text_features().features.clone()
        assert tiny_model.class_text_features().features is tiny_model.class_text_features().features
    with torch.no_grad():
        tiny_model.text_prompts.ctx.add_(0.5)  # in place, like an optimiser step
        second = tiny_model.class_text_features().features
    assert not torch.allclose(first, second)


def test_loss_lowers_on_a_tiny_problem(tiny_config):
    tiny_config.loss.gamma = 0.0
    model = create_model(tiny_config).train()
    images, labels = batch(8)
    optimizer = torch.optim.Adam(model.learnable_parameters().values(), lr=0.05)
    losses, ce = [], []
    for _ in range(60):
        terms = mpafer_loss(model, model(images), labels)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
        ce.append(terms["ce"].item())
    # the objective as a whole; the alignment terms pull the context towards this random tower's
    # hard prompts, which are no classifier, so CE alone falls more slowly
    assert losses[-1] < 0.6 * losses[0]
    assert ce[-1] < 0.9 * ce[0]


def test_ablation_switches(tiny_config):
    zero_shot = create_model(MPAFERConfig(backbone=tiny_config.backbone, use_text_prompts=False,
                                          visual_prompt_tokens=0, use_local=False))
    assert zero_shot.num_learnable() == 0
    images, _ = batch()
    with torch.no_grad():
        out = zero_shot(images)
        torch.testing.assert_close(out.logits, zero_shot.logit_scale * out.global_scores)
        torch.testing.assert_close(out.text.features, zero_shot.hard_class_features())
    with pytest.raises(ValueError, match="global term, the local term, or both"):
        create_model(MPAFERConfig(backbone=tiny_config.backbone, use_global=False, use_local=False))(images)


def test_prototype_loss_needs_prototypes(tiny_model):
    images, labels = batch()
    with pytest.raises(ValueError, match="compute_prototypes"):
        mpafer_loss(tiny_model, tiny_model.train()(images), labels)


def test_similarity_maps_for_free_text(tiny_model):
    images, _ = batch(2)
    with torch.no_grad():
        out = tiny_model.eval()(images)
        texts = tiny_model.encode_text(["wrinkled nose", "corners of the mouth pulled up"])
        maps = tiny_model.similarity_maps(out.patch_features, texts)
    assert maps.shape == (2, 2, 4, 4)
    assert maps.abs().max() <= 1.0 + 1e-5
    # a class's own text feature gives back that class's map
    with torch.no_grad():
        own = tiny_model.similarity_maps(out.patch_features, out.text.features[:1])
    torch.testing.assert_close(own[:, 0], out.maps[:, 0])


def test_class_subset_and_unknown_class(tiny_config):
    tiny_config.classes = ["happiness", "neutral"]
    model = create_model(tiny_config)
    assert model.classes == ("happiness", "neutral") and model.prompt_names[0] == "happy"
    assert set(model.hard_class.tolist()) == {0, 1}
    first = model.hard_prompts[0]
    assert first.class_index == 0 and "happy" in first.text
    tiny_config.classes = ["joy"]
    with pytest.raises(ValueError, match="not in hard-prompt bank"):
        create_model(tiny_config)


def test_prototypes_are_class_means_of_frozen_features(tiny_model):
    images, labels = batch(8)
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 4, 5, 6, 7][:8])
    extra = torch.randn(2, 3, 32, 32)
    prototypes = compute_prototypes(tiny_model, [(images, labels), (extra, torch.tensor([6, 7]))], progress=False)
    with torch.no_grad():
        feats, _ = tiny_model.encode_image(images, prompted=False)
    expected = torch.nn.functional.normalize(feats[:2].mean(0), dim=-1)
    torch.testing.assert_close(prototypes[0], expected)
    assert torch.equal(tiny_model.prototypes, prototypes)
    limited = compute_prototypes(tiny_model, [(images, labels), (extra, torch.tensor([6, 7]))], per_class=1,
                                 progress=False, store=False)
    torch.testing.assert_close(limited[0], feats[0])
    with pytest.raises(ValueError, match="contempt"):
        compute_prototypes(tiny_model, [(images[:2], torch.tensor([0, 1]))], progress=False)


def test_caches_made_under_inference_mode_still_serve_gradients(tiny_model):
    """The demo caches text features under inference_mode; Grad-CAM later needs autograd through them."""
    images, _ = batch(1)
    with torch.inference_mode():
        tiny_model.eval()(images)
        tiny_model.hard_text_features()
    images.requires_grad_(True)
    out = tiny_model(images)
    out.logits[0, 0].backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()


def test_text_anchor_starts_at_the_hard_prompt_ensemble_and_still_learns(tiny_config):
    tiny_config.text_anchor = True
    tiny_config.loss.gamma = 0.0
    model = create_model(tiny_config).train()
    hard = model.hard_class_features()
    torch.testing.assert_close(model.class_text_features().features, hard)  # stage 1 starts at zero-shot
    plain = create_model(MPAFERConfig(backbone=tiny_config.backbone, n_ctx=4, topk=4, visual_prompt_tokens=0))
    assert not torch.allclose(plain.class_text_features().features, hard)  # one template's features differ
    offset = model.text_anchor_offset.clone()
    optimizer = torch.optim.Adam([model.text_prompts.ctx], lr=0.05)
    images, labels = batch(8)
    for _ in range(3):
        terms = mpafer_loss(model, model(images), labels)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        moved = model.class_text_features().features
    assert not torch.allclose(moved, hard), "the anchored soft prompts must still learn"
    torch.testing.assert_close(moved.norm(dim=-1), torch.ones(8))
    assert torch.equal(model.text_anchor_offset, offset), "the anchor is fixed, not learnt"


def test_text_anchor_without_its_offset_is_a_clear_error(tiny_config):
    tiny_config.text_anchor = True
    model = create_model(tiny_config)
    model.text_anchor_offset = torch.zeros(0)
    with pytest.raises(ValueError, match="anchor_text_prompts"):
        model.class_text_features()


def test_generic_direction_out_levels_global_features_and_survives_a_checkpoint(tiny_config, tmp_path):
    from mpafer.checkpoint import load_checkpoint, save_checkpoint

    images, _ = batch(4)
    torch.manual_seed(0)
    kept = create_model(tiny_config).eval()
    config = copy.deepcopy(tiny_config)  # the model keeps its config object
    config.generic_direction_out = True
    torch.manual_seed(0)
    out = create_model(config).eval()
    with torch.no_grad():
        g_kept, p_kept = kept.encode_image(images)
        g_out, p_out = out.encode_image(images)
        g_frozen, _ = out.encode_image(images, prompted=False)
    direction = out.generic_direction()
    assert abs(float(direction.norm()) - 1) < 1e-5
    assert (g_kept @ direction).abs().max() > 1e-3  # a random tower is not level along it by chance
    assert (g_out @ direction).abs().max() < 1e-5 and (g_frozen @ direction).abs().max() < 1e-5
    torch.testing.assert_close(g_out.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(p_out, p_kept)  # patches (local term, maps) unchanged
    # what is left of the feature is the same: only the component along the direction went
    rest = g_kept - (g_kept @ direction)[:, None] * direction
    torch.testing.assert_close(g_out, rest / rest.norm(dim=-1, keepdim=True))
    save_checkpoint(out, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.generic_direction_out
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images)[0], g_out)
