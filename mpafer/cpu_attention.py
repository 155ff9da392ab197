"""open_clip's residual attention block with its attention matrix products kept in bfloat16 on the CPU.

Under bf16 autocast on a CPU, ``nn.MultiheadAttention`` ends in the plain-math SDPA kernel (the one
``mpafer.precision`` pins: the flash kernel's backward is slower still), and that kernel computes
in float32 and masks fully masked rows (``isneginf``, ``all``, ``where``) that an unmasked image
never has. Written out here, QK^T, the softmax and AV stay in bfloat16: at the default stage-0
shapes (batch 128, 145 tokens, 4 heads of 32) one block's attention forward and backward took
66 ms instead of 177 ms on the 2-core AVX-512-BF16 development machine (about a third of a training
step saved over three blocks). The arithmetic is the block's own; float32 gives the block's output
(``tests/test_cpu_attention.py``). Everything else (GPUs, float32 inference, Grad-CAM's hooks)
calls the block itself.
"""
from __future__ import annotations

import torch
from torch import nn

from .precision import cpu_bf16_autocast


def applies(block: nn.Module, x: torch.Tensor) -> bool:
    """Use the written-out block: CPU tensors under bf16 autocast, a plain batch-first open_clip block."""
    return x.device.type == "cpu" and cpu_bf16_autocast() and is_plain_block(block)


def is_plain_block(block: nn.Module) -> bool:
    attn = getattr(block, "attn", None)
    return (isinstance(attn, nn.MultiheadAttention) and attn.batch_first and attn.in_proj_weight is not None
            and attn.dropout == 0.0 and attn.bias_k is None and not hasattr(block, "ln_1_kv")
            and all(hasattr(block, name) for name in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2")))


def self_attention(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """``attn(x, x, x, need_weights=False)[0]`` for a (B, L, W) batch-first input without a mask."""
    batch, length, width = x.shape
    heads = attn.num_heads
    qkv = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    scores = (q * (width // heads) ** -0.5) @ k.transpose(-1, -2)
    # the softmax in the matrix products' dtype: autocast would send it to float32 and back
    weights = scores.softmax(-1, dtype=scores.dtype)
    out = (weights @ v).transpose(1, 2).reshape(batch, length, width)
    return attn.out_proj(out)


def fused_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, 3W) queries, keys and values side by side (an in-projection's output) -> (B, L, W) attention
    output, through SDPA (its fused CPU kernel, unless a caller pinned another): the core of the bfloat16
    inference copy's blocks (``mpafer.bf16_inference``). Of four ways tried in the whole bf16 pass per face
    on the 2-core development machine (float32 or bf16, written out or fused; a one-off interleaved trial),
    bf16 through the fused kernel was the fastest; tests bound its difference from the block's own attention."""
    batch, length, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    out = nn.functional.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, length, width)


def block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` for an open_clip ResidualAttentionBlock (self-attention, no mask)."""
    x = x + block.ls_1(self_attention(block.attn, block.ln_1(x)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def run_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One batch-first block: the bf16 CPU path where it applies, else the block itself."""
    return block_forward(block, x) if applies(block, x) else block(x)
