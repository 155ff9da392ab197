"""The written-out bf16 CPU block: the block's own arithmetic, used only under CPU bf16 autocast."""
import copy

import pytest
import torch

from mpafer.backbone import BackboneConfig, load_backbone
from mpafer.cpu_attention import applies, block_forward, run_block
from mpafer.prompts import visual_features


@pytest.fixture(scope="module")
def visual():
    torch.manual_seed(0)
    return load_backbone(BackboneConfig("mpafer-tiny")).model.visual


def test_the_written_out_block_is_the_block_in_float32(visual):
    block = copy.deepcopy(visual.transformer.resblocks[0]).requires_grad_(True)  # the backbone is frozen
    x = torch.randn(3, 17, block.ln_1.normalized_shape[0], requires_grad=True)
    ours = block_forward(block, x)
    theirs = block(x)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    grad_ours = torch.autograd.grad(ours.square().sum(), [x, block.attn.in_proj_weight])
    grad_theirs = torch.autograd.grad(theirs.square().sum(), [x, block.attn.in_proj_weight])
    for a, b in zip(grad_ours, grad_theirs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_it_is_used_only_under_cpu_bf16_autocast(visual):
    block = visual.transformer.resblocks[0]
    x = torch.randn(2, 17, block.ln_1.normalized_shape[0])
    assert not applies(block, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert applies(block, x)
        assert torch.equal(run_block(block, x), block_forward(block, x))
        close = (run_block(block, x).float() - block(x).float()).abs().max()
    assert close < 0.05  # bf16 rounding, not another function
    assert torch.equal(run_block(block, x), block(x))  # float32: the block itself
    with torch.autocast("cpu", dtype=torch.float16):
        assert not applies(block, x)


def test_bf16_features_follow_float32_features(visual):
    visual.eval()
    images = torch.randn(4, 3, *visual.image_size)
    exact = visual_features(visual, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = visual_features(visual, images)
    cosine = torch.nn.functional.cosine_similarity(exact.pooled, fast.pooled.float(), dim=-1)
    assert cosine.min() > 0.99


def test_fused_attention_is_the_blocks_attention(visual):
    """the bf16 inference copy's attention core: SDPA over the in-projection's output."""
    from mpafer.cpu_attention import fused_attention

    attn = visual.transformer.resblocks[0].attn
    x = torch.randn(2, 17, attn.embed_dim)
    with torch.no_grad():
        qkv = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        ours = attn.out_proj(fused_attention(qkv, attn.num_heads))
        theirs = attn(x, x, x, need_weights=False)[0]
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        rounded = attn.out_proj(fused_attention(qkv.bfloat16(), attn.num_heads).float())
        assert (rounded - theirs).abs().max() < 0.05
