"""Learnable prompts around frozen open_clip encoders.

* ``TextEncoder``: the frozen text tower run on token *embeddings*, so soft context vectors can
  stand in for word embeddings (CoOp). open_clip's modules are used as they are, never edited.
* ``TextPromptLearner``: owns the M context vectors (shared or class-specific) and builds the
  ``[SOS][ctx_1..ctx_M][class].[EOS]`` embeddings, and the mask of the soft tokens L_ta compares
  (``soft_token_mask``: on a causal tower, not the shared context).
* ``DeepVisualPrompts`` + ``visual_features``: VPT-deep, N learnable tokens appended at the input
  of each of the first K blocks of the frozen ViT and dropped after it; returns the global
  feature and every patch feature, both projected into the joint space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from .cpu_attention import run_block


class TextEncoder:
    """A view of the frozen text tower of a ``CLIP`` or ``CustomTextCLIP`` (built-in transformer)."""

    def __init__(self, clip_model: nn.Module):
        tower = clip_model if hasattr(clip_model, "token_embedding") else getattr(clip_model, "text", None)
        if tower is None or not hasattr(tower, "token_embedding") or getattr(tower, "cls_emb", None) is not None:
            raise TypeError("soft text prompts need open_clip's own text transformer (no HF/CLS-token towers)")
        self.tower = tower
        self.pool_type = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        # open_clip keeps an eos id on every tower, but only 'eos' pooling uses it
        eos_id = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        self.eos_id = eos_id if self.pool_type == "eos" else None

    @property
    def causal(self) -> bool:
        """True when each output token sees only the tokens before it (open_clip's default mask).

        On a causal tower the outputs at a shared context are the same for every class, so
        ``TextPromptLearner`` leaves them out of L_ta's token mask; text towers without the
        mask (``no_causal_mask``, or a bidirectional HF tower) report False.
        """
        return getattr(self.tower, "attn_mask", None) is not None

    @property
    def width(self) -> int:
        return self.tower.token_embedding.weight.shape[1]

    @property
    def device(self) -> torch.device:
        return self.tower.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tower.token_embedding.weight.dtype

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tower.token_embedding(tokens)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.tower.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def encode_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor,
                          return_tokens: bool = False):
        """(N, L, W) embeddings + the (N, L) token ids they stand for -> (N, D) pooled features.

        With ``return_tokens`` also every position's output, projected: (N, L, D).
        """
        tower = self.tower
        x = embeddings + tower.positional_embedding.to(embeddings.dtype)
        x = tower.transformer(x, attn_mask=tower.attn_mask)
        x = tower.ln_final(x)
        pooled = self._project(text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id))
        if not return_tokens:
            return pooled
        return pooled, self._project(x)

    def encode_tokens(self, tokens: torch.Tensor, return_tokens: bool = False):
        return self.encode_embeddings(self.embed(tokens), tokens, return_tokens)


def eot_positions(tokens: torch.Tensor, eos_id: int | None = None) -> torch.Tensor:
    """Index of the end-of-text token of each row (open_clip's 'argmax' convention)."""
    if eos_id is not None:
        return (tokens == eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def content_mask(tokens: torch.Tensor, eos_id: int | None = None) -> torch.Tensor:
    """True at the positions after SOS up to and including EOT: the tokens that carry the prompt."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    eot = eot_positions(tokens, eos_id)
    return (positions[None, :] >= 1) & (positions[None, :] <= eot[:, None])


def soft_token_mask(tokens: torch.Tensor, n_ctx: int, causal: bool, shared_ctx: bool,
                    eos_id: int | None = None) -> torch.Tensor:
    """The soft-prompt positions L_ta compares: those whose outputs can differ between classes.

    On a causal tower a shared context's outputs (positions 1..n_ctx) see only SOS and the
    context, identical for every class, so only the class name onward counts; on a bidirectional
    tower, or with class-specific context, every content token does.
    """
    mask = content_mask(tokens, eos_id)
    if causal and shared_ctx:
        mask[:, :1 + n_ctx] = False
    return mask


class TextPromptLearner(nn.Module):
    """CoOp-style soft prompts: ``[SOS][ctx_1..ctx_M][class name].[EOS]``."""

    def __init__(self, text: TextEncoder, tokenizer, class_prompt_names: list[str], n_ctx: int = 10,
                 ctx_init: str | None = None, class_specific: bool = False):
        super().__init__()
        num_classes = len(class_prompt_names)
        width = text.width
        device = text.device  # the frozen tower may already be on a GPU
        with torch.no_grad():
            if ctx_init:
                # start the context from a hand-written phrase, as CoOp's "a photo of a"
                init_tokens = tokenizer([ctx_init]).to(device)
                n_ctx = int(eot_positions(init_tokens, text.eos_id)[0]) - 1
                init = text.embed(init_tokens)[0, 1:1 + n_ctx].float()
                ctx = init.expand(num_classes, -1, -1).clone() if class_specific else init.clone()
            else:
                shape = (num_classes, n_ctx, width) if class_specific else (n_ctx, width)
                ctx = torch.empty(shape).normal_(std=0.02).to(device)  # drawn on the CPU: same values anywhere
            placeholder = " ".join(["X"] * n_ctx)
            tokens = tokenizer([f"{placeholder} {name}." for name in class_prompt_names]).to(device)
            embedding = text.embed(tokens).float()
        if bool(tokens[:, -1].ne(0).any()):  # the tokenizer truncated a prompt to fit
            raise ValueError("a class prompt is longer than the text encoder's context length")
        self.n_ctx = n_ctx
        self.class_specific = class_specific
        # positions up to the longest prompt's EOT: fixed once tokenised, so no per-step device sync
        self.length = int(eot_positions(tokens, text.eos_id).max()) + 1
        token_mask = soft_token_mask(tokens, n_ctx, text.causal, not class_specific, text.eos_id)
        self.register_buffer("token_mask", token_mask[:, :self.length], persistent=False)
        self.ctx = nn.Parameter(ctx)
        # derived from frozen weights on construction: not saved, rebuilt on load
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedding[:, :1], persistent=False)
        self.register_buffer("suffix", embedding[:, 1 + n_ctx:], persistent=False)

    def forward(self) -> torch.Tensor:
        """(C, L, W) prompt embeddings: SOS, the context vectors, then the class name and EOT."""
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.prefix.shape[0], -1, -1)
        return torch.cat([self.prefix, ctx.to(self.prefix.dtype), self.suffix], dim=1)


class DeepVisualPrompts(nn.Module):
    """N learnable tokens for each of the first K blocks of a ViT (VPT-deep)."""

    def __init__(self, num_tokens: int, depth: int, width: int, patch_size: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.depth = depth
        # VPT's initialisation: uniform with a Xavier bound over patch pixels and width
        bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + width))
        self.prompts = nn.Parameter(torch.empty(depth, num_tokens, width).uniform_(-bound, bound))

    def forward(self, block_index: int, batch_size: int, dtype: torch.dtype) -> torch.Tensor | None:
        if block_index >= self.depth or self.num_tokens == 0:
            return None
        return self.prompts[block_index].to(dtype).unsqueeze(0).expand(batch_size, -1, -1)


@dataclass
class ImageFeatures:
    pooled: torch.Tensor  # (B, D) global feature in the joint space, not normalised
    patches: torch.Tensor  # (B, N, D) patch features in the joint space, not normalised
    grid: tuple[int, int]


def visual_features(visual: nn.Module, images: torch.Tensor,
                    prompts: DeepVisualPrompts | None = None) -> ImageFeatures:
    """Run open_clip's VisionTransformer with deep prompts (or none) and keep the patch tokens.

    Raw (not normalised) features; ``MPAFER.encode_image`` is the normalised pair the model scores with."""
    if getattr(visual, "attn_pool", None) is not None or visual.pool_type != "tok":
        raise TypeError("mpafer needs a class-token ViT (pool_type 'tok', no attention pooling)")
    x = visual._embeds(images)  # (B, 1 + N, W): class token, patches, positions, ln_pre
    length = x.shape[1]
    batch_first = getattr(visual.transformer, "batch_first", True)
    for index, block in enumerate(visual.transformer.resblocks):
        extra = prompts(index, x.shape[0], x.dtype) if prompts is not None else None
        if extra is not None:
            x = torch.cat([x, extra], dim=1)
        if batch_first:
            x = run_block(block, x)  # the block itself, or its bf16 CPU attention under autocast
        else:
            x = block(x.transpose(0, 1)).transpose(0, 1)
        if extra is not None:
            x = x[:, :length]  # prompts are dropped after each block
    pooled, tokens = visual._pool(x)
    if visual.final_ln_after_pool:  # open_clip normalises only the pooled token then
        tokens = visual.ln_post(tokens)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
        tokens = tokens @ visual.proj
    grid = tuple(int(g) for g in visual.grid_size)
    return ImageFeatures(pooled=pooled, patches=tokens, grid=grid)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Unit length along the last axis, in float32 (features; images are standardised in mpafer.transforms)."""
    return F.normalize(x.float(), dim=-1)


def class_means(features: torch.Tensor, owner: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(P, D) prompt features and the class of each -> (C, D): each class's unit features averaged, unit length
    again. The zero-shot classifier of a prompt ensemble (and L_pa's target)."""
    one_hot = F.one_hot(owner.to(features.device), num_classes).to(features.dtype)
    return F.normalize(one_hot.t() @ F.normalize(features, dim=-1), dim=-1)


def text_encoder_for(clip_model: nn.Module):
    """The embedding-level view of a model's frozen text tower: open_clip's own, or a Hugging Face one."""
    from .hf_text import HFTextEncoderView, is_hf_text_tower

    return HFTextEncoderView(clip_model) if is_hf_text_tower(clip_model) else TextEncoder(clip_model)
