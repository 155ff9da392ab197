import copy

import pytest
import torch

from mpafer.backbone import load_backbone
from mpafer.prompts import DeepVisualPrompts, TextEncoder, TextPromptLearner, visual_features


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("mpafer-tiny")


def test_soft_prompt_equals_hard_text_when_context_is_the_phrase(backbone):
    """With the context set to the words' own embeddings, the soft path is the frozen encode_text."""
    text = TextEncoder(backbone.model)
    learner = TextPromptLearner(text, backbone.tokenizer, ["happy", "sad"], ctx_init="a photo of a")
    assert learner.n_ctx == 4
    with torch.no_grad():
        soft = text.encode_embeddings(learner(), learner.tokens)
        hard = backbone.model.encode_text(backbone.tokenizer(["a photo of a happy.", "a photo of a sad."]))
    torch.testing.assert_close(soft, hard)


def test_context_replaces_the_placeholder_embeddings(backbone):
    text = TextEncoder(backbone.model)
    learner = TextPromptLearner(text, backbone.tokenizer, ["happy", "sad", "angry"], n_ctx=5)
    embeddings = learner()
    assert embeddings.shape == (3, 77, text.width)
    for row in range(3):
        torch.testing.assert_close(embeddings[row, 1:6], learner.ctx)
    specific = TextPromptLearner(text, backbone.tokenizer, ["happy", "sad", "angry"], n_ctx=5, class_specific=True)
    assert specific.ctx.shape == (3, 5, text.width)
    torch.testing.assert_close(specific()[2, 1:6], specific.ctx[2])


def test_too_long_class_prompt_is_refused(backbone):
    text = TextEncoder(backbone.model)
    with pytest.raises(ValueError, match="context length"):
        TextPromptLearner(text, backbone.tokenizer, ["very " * 80 + "happy"], n_ctx=4)


def test_unprompted_image_path_matches_open_clip(backbone):
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = visual_features(backbone.model.visual, images)
        theirs = backbone.model.encode_image(images)
    torch.testing.assert_close(ours.pooled, theirs)
    assert ours.patches.shape == (2, 16, theirs.shape[1]) and ours.grid == (4, 4)


def test_deep_prompts_change_the_output_and_are_dropped_after_each_block(backbone):
    visual = backbone.model.visual
    prompts = DeepVisualPrompts(num_tokens=3, depth=1, width=visual.transformer.width, patch_size=8)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = visual_features(visual, images)
        prompted = visual_features(visual, images, prompts)
    assert prompted.patches.shape == plain.patches.shape  # prompt tokens never reach the output
    assert not torch.allclose(prompted.pooled, plain.pooled)
    assert prompts(1, 2, torch.float32) is None  # only the first K=1 blocks get prompts


def test_each_block_sees_its_prompts_and_none_after_block_k(backbone):
    """Inside visual_features: blocks before K get N extra tokens, later blocks only the image's own."""
    visual = backbone.model.visual
    blocks = visual.transformer.resblocks
    assert len(blocks) >= 2, "the test needs a ViT with at least two blocks"
    prompts = DeepVisualPrompts(num_tokens=3, depth=1, width=visual.transformer.width, patch_size=8)
    seen: list[int] = []
    batch_first = getattr(visual.transformer, "batch_first", True)
    hooks = [b.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1 if batch_first else 0]))
             for b in blocks]
    try:
        with torch.no_grad():
            visual_features(visual, torch.randn(2, 3, 32, 32), prompts)
    finally:
        for hook in hooks:
            hook.remove()
    own = 1 + 16  # class token + the 4 x 4 patches
    assert seen == [own + 3] + [own] * (len(blocks) - 1)


def soft_token_outputs(text, learner):
    with torch.no_grad():
        _, per_token = text.encode_embeddings(learner(), learner.tokens, return_tokens=True)
    return per_token[:, :learner.length]


def test_soft_token_mask_on_a_causal_tower_leaves_out_the_shared_context(backbone):
    text = TextEncoder(backbone.model)
    assert text.causal
    learner = TextPromptLearner(text, backbone.tokenizer, ["happy", "sad", "angry"], n_ctx=4)
    mask, eot = learner.token_mask, learner.tokens.argmax(-1)
    outputs = soft_token_outputs(text, learner)
    # why: positions 1..4 (the context) see only SOS and the context, the same for every class
    torch.testing.assert_close(outputs[0, 1:5], outputs[1, 1:5])
    assert not torch.allclose(outputs[0, 5], outputs[1, 5])  # the class name differs
    for row in range(3):
        assert not mask[row, :5].any()
        assert mask[row, 5:int(eot[row]) + 1].all() and not mask[row, int(eot[row]) + 1:].any()
    # class-specific context differs between classes even on a causal tower, so it counts
    specific = TextPromptLearner(text, backbone.tokenizer, ["happy", "sad", "angry"], n_ctx=4, class_specific=True)
    assert specific.token_mask[:, 1:5].all() and not specific.token_mask[:, 0].any()


def test_soft_token_mask_on_a_bidirectional_tower_counts_every_content_token(backbone):
    model = copy.deepcopy(backbone.model)
    model.attn_mask = None  # open_clip's no_causal_mask: every token sees every token
    text = TextEncoder(model)
    assert not text.causal
    learner = TextPromptLearner(text, backbone.tokenizer, ["happy", "sad", "angry"], n_ctx=4)
    outputs = soft_token_outputs(text, learner)
    assert not torch.allclose(outputs[0, 1:5], outputs[1, 1:5])  # the context now hears the class name
    mask, eot = learner.token_mask, learner.tokens.argmax(-1)
    for row in range(3):
        assert not mask[row, 0]
        assert mask[row, 1:int(eot[row]) + 1].all() and not mask[row, int(eot[row]) + 1:].any()
