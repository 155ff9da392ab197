import pytest
import torch

from mpafer.backbone import load_backbone
from mpafer.prompts import DeepVisualPrompts, TextEncoder, TextPromptLearner, encode_image


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
        ours = encode_image(backbone.model.visual, images)
        theirs = backbone.model.encode_image(images)
    torch.testing.assert_close(ours.pooled, theirs)
    assert ours.patches.shape == (2, 16, theirs.shape[1]) and ours.grid == (4, 4)


def test_deep_prompts_change_the_output_and_are_dropped_after_each_block(backbone):
    visual = backbone.model.visual
    prompts = DeepVisualPrompts(num_tokens=3, depth=1, width=visual.transformer.width, patch_size=8)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = encode_image(visual, images)
        prompted = encode_image(visual, images, prompts)
    assert prompted.patches.shape == plain.patches.shape  # prompt tokens never reach the output
    assert not torch.allclose(prompted.pooled, plain.pooled)
    assert prompts(1, 2, torch.float32) is None  # only the first K=1 blocks get prompts
