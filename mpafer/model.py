"""MPA-FER: frozen open_clip + soft text prompts + deep visual prompts + CGLA.

Only the prompts learn (a fraction of a megabyte for ViT-B/16). The frozen encoders stay in
eval mode and receive no gradients; hard-prompt (LLM description) features and class
prototypes are fixed tensors computed once from the frozen model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .backbone import Backbone, BackboneConfig, load_backbone
from .cgla import cgla_scores, patch_text_similarity, to_grid
from .descriptions import HardPrompt, load_bank
from .input_protocol import InputProtocol
from .losses import LossConfig
from .prompts import (DeepVisualPrompts, ImageFeatures, TextPromptLearner, class_means, content_mask,
                      l2_normalize, text_encoder_for, visual_features)


@dataclass
class MPAFERConfig:
    backbone: BackboneConfig
    bank: str = "ferplus"  # hard-prompt bank: a name in assets/descriptions or a JSON path
    classes: list[str] | None = None  # default: the bank's classes, in its label order
    n_ctx: int = 10
    ctx_init: str | None = None
    class_specific_ctx: bool = False
    use_text_prompts: bool = True  # False: class features are the hard prompts' mean (zero-shot)
    # True: the soft prompts learn a residual on the hard prompts' ensemble, so stage 1 starts exactly at
    # the zero-shot classifier instead of at one template's (lower) features
    text_anchor: bool = False
    # True: the generic face-sentence direction (the hard prompts' mean feature) is projected out of the
    # global image feature. Unseen texts lie mostly along it, so without this the class whose faces sit
    # furthest along it wins free text by mean cosine; for the class scores it is nearly a constant
    # (training/generic_direction_check.py measures both). Patch features are left as they are.
    generic_direction_out: bool = False
    visual_prompt_tokens: int = 8
    visual_prompt_depth: int = 8  # first K blocks; -1 = every block
    topk: int = 16
    use_global: bool = True
    use_local: bool = True
    logit_scale: float | None = None  # None: the backbone's own (capped at 100)
    loss: LossConfig = field(default_factory=LossConfig)
    input: InputProtocol = field(default_factory=InputProtocol)  # how faces are prepared for it

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["backbone"] = self.backbone.to_dict()
        data["input"] = InputProtocol.from_dict(self.input).to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MPAFERConfig":
        data = dict(data)
        backbone = data.pop("backbone")
        loss = data.pop("loss", {}) or {}
        protocol = InputProtocol.from_dict(data.pop("input", None))  # absent in older checkpoints
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown MPA-FER config keys: {sorted(unknown)}")
        return cls(backbone=backbone if isinstance(backbone, BackboneConfig) else BackboneConfig.from_dict(backbone),
                   loss=loss if isinstance(loss, LossConfig) else LossConfig(**loss), input=protocol, **data)


@dataclass
class TextFeatures:
    features: torch.Tensor  # (C, D) normalised class features
    tokens: torch.Tensor | None = None  # (C, L, D) normalised per-token outputs (training)
    token_mask: torch.Tensor | None = None  # (C, L)


@dataclass
class MPAFEROutput:
    logits: torch.Tensor  # (B, C)
    global_scores: torch.Tensor  # (B, C)
    local_scores: torch.Tensor  # (B, C)
    maps: torch.Tensor  # (B, C, H, W) patch-to-class cosines
    image_features: torch.Tensor  # (B, D) normalised prompted global feature
    patch_features: torch.Tensor  # (B, N, D) normalised patch features
    text: TextFeatures

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.float().softmax(dim=-1)


class MPAFER(nn.Module):
    def __init__(self, config: MPAFERConfig, backbone: Backbone, classes: Sequence[str],
                 prompt_names: Sequence[str], hard_prompts: Sequence[HardPrompt]):
        super().__init__()
        self.config = config
        self.backbone_info = backbone
        self.clip = backbone.model  # frozen: requires_grad False, always eval
        self.classes = tuple(classes)
        self.prompt_names = tuple(prompt_names)
        self.hard_prompts = tuple(hard_prompts)
        self.text = text_encoder_for(self.clip)
        self.tokenizer = backbone.tokenizer
        visual = self.clip.visual

        self.text_prompts = None
        if config.use_text_prompts:
            self.text_prompts = TextPromptLearner(self.text, self.tokenizer, list(prompt_names), config.n_ctx,
                                                  config.ctx_init, config.class_specific_ctx)
        blocks = len(visual.transformer.resblocks)
        depth = blocks if config.visual_prompt_depth < 0 else min(config.visual_prompt_depth, blocks)
        self.visual_prompts = None
        if config.visual_prompt_tokens > 0 and depth > 0:
            self.visual_prompts = DeepVisualPrompts(config.visual_prompt_tokens, depth,
                                                    visual.transformer.width, visual.patch_size[0])

        scale = config.logit_scale
        if scale is None:
            scale = min(float(self.clip.logit_scale.exp()), 100.0)
        self.logit_scale = float(scale)
        self.register_buffer("hard_class", torch.tensor([p.class_index for p in hard_prompts], dtype=torch.long),
                             persistent=False)
        # Fixed tensors computed from the frozen model; saved by mpafer.checkpoint, not by state_dict:
        # prototypes (L_v's class means of image features) and the hard prompts' pooled text features.
        self.register_buffer("prototypes", torch.zeros(0), persistent=False)
        self.register_buffer("hard_text_cache", torch.zeros(0), persistent=False)
        # text_anchor's fixed (C, D) offset: the ensemble minus the soft prompts' initial class features
        self.register_buffer("text_anchor_offset", torch.zeros(0), persistent=False)
        # Recomputable, never saved: the hard prompts' per-token features (L_ta), and the soft prompts'
        # class features keyed by the context's version (valid until the next optimiser step).
        self._hard_token_features: tuple[torch.Tensor, torch.Tensor] | None = None
        self._soft_class_features: tuple[Any, TextFeatures] | None = None

    # ---- bookkeeping -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text space."""
        proj = self.clip.visual.proj
        return int(proj.shape[-1]) if proj is not None else int(self.clip.visual.transformer.width)

    @property
    def image_size(self) -> int:
        return self.backbone_info.image_size

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(int(g) for g in self.clip.visual.grid_size)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen encoders never switch dropout/batch-norm to training
        return self

    def learnable_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def learnable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.learnable_parameters().items()}

    def num_learnable(self) -> int:
        return sum(p.numel() for p in self.learnable_parameters().values())

    # ---- text side ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Frozen text features (T, D), normalised, for any texts: descriptions or free text."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
            chunks.append(l2_normalize(self.text.encode_tokens(tokens)))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.embed_dim, device=self.device)

    def hard_text_features(self) -> torch.Tensor:
        """(P, D) features of every hard prompt, computed once from the frozen text encoder."""
        if self.hard_text_cache.numel() == 0:
            with torch.inference_mode(False):
                self.hard_text_cache = self.encode_text([p.text for p in self.hard_prompts]).to(self.device)
        return self.hard_text_cache

    def hard_class_features(self) -> torch.Tensor:
        """(C, D): each class's hard prompts averaged (the zero-shot ensemble), normalised."""
        features = self.hard_text_features()
        return class_means(features, self.hard_class, self.num_classes)

    @torch.no_grad()
    def hard_token_features(self, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token frozen outputs of every hard prompt, for L_ta: (P, L, D) and mask (P, L)."""
        if self._hard_token_features is None or self._hard_token_features[0].device != self.device:
            tokens = self.tokenizer([p.text for p in self.hard_prompts]).to(self.device)
            mask = content_mask(tokens, self.text.eos_id)
            length = int(mask.sum(1).max()) + 1
            outputs = []
            for start in range(0, tokens.shape[0], batch_size):
                _, per_token = self.text.encode_tokens(tokens[start:start + batch_size], return_tokens=True)
                outputs.append(l2_normalize(per_token[:, :length]))
            self._hard_token_features = (torch.cat(outputs), mask[:, :length])
        return self._hard_token_features

    def anchor_text_prompts(self) -> torch.Tensor:
        """Fix text_anchor's offset from the soft prompts as they are now (their initial values):
        from here on the class features are normalise(soft + offset), which equals the ensemble now."""
        learner = self.text_prompts
        if learner is None:
            raise ValueError("text_anchor needs the soft text prompts (use_text_prompts=True)")
        with torch.inference_mode(False), torch.no_grad():  # inference_mode(False) alone re-enables grad
            soft = l2_normalize(self.text.encode_embeddings(learner(), learner.tokens).float())
            self.text_anchor_offset = (self.hard_class_features().float() - soft).to(self.device)
        return self.text_anchor_offset

    def _anchored(self, pooled: torch.Tensor) -> torch.Tensor:
        if not self.config.text_anchor:
            return pooled
        if self.text_anchor_offset.numel() == 0:
            raise ValueError("text_anchor is on but its offset is not set: call model.anchor_text_prompts() "
                             "before training (create_model does), or load a checkpoint that stores it")
        return l2_normalize(pooled + self.text_anchor_offset.to(pooled.dtype))

    def _soft_text(self, with_tokens: bool) -> TextFeatures:
        learner = self.text_prompts
        pooled, per_token = self.text.encode_embeddings(learner(), learner.tokens, return_tokens=True)
        pooled = self._anchored(l2_normalize(pooled))
        if not with_tokens:
            return TextFeatures(pooled)
        return TextFeatures(pooled, l2_normalize(per_token[:, :learner.length]), learner.token_mask)

    def class_text_features(self, with_tokens: bool = False) -> TextFeatures:
        """Class features from the soft prompts, cached while the context does not change."""
        if self.text_prompts is None:
            return TextFeatures(self.hard_class_features())
        needs_grad = torch.is_grad_enabled() and self.text_prompts.ctx.requires_grad
        if needs_grad or with_tokens:
            return self._soft_text(with_tokens)
        ctx = self.text_prompts.ctx
        key = (ctx._version, ctx.data_ptr(), ctx.device)  # optimiser steps bump _version
        if self._soft_class_features is None or self._soft_class_features[0] != key:
            # plain tensors even under inference_mode, so a later Grad-CAM pass may use the cache
            with torch.inference_mode(False), torch.no_grad():
                self._soft_class_features = (key, self._soft_text(False))
        return self._soft_class_features[1]

    # ---- image side --------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, prompted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (B, D) global and (B, N, D) patch features; prompted=False is the frozen CLIP."""
        return self.image_embeddings(visual_features(self.clip.visual, images,
                                                     self.visual_prompts if prompted else None))

    def image_embeddings(self, features: ImageFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """The image tower's raw outputs -> the normalised float32 pair ``encode_image`` returns (another
        copy of the tower, such as ``mpafer.bf16_inference``'s, hands its outputs on through here)."""
        pooled = l2_normalize(features.pooled)
        if self.config.generic_direction_out:
            direction = self.generic_direction()
            pooled = l2_normalize(pooled - (pooled @ direction)[:, None] * direction)
        return pooled, l2_normalize(features.patches)

    def generic_direction(self) -> torch.Tensor:
        """(D,) the unit mean of the hard prompts' unit features: what every face sentence shares."""
        return l2_normalize(l2_normalize(self.hard_text_features()).mean(0))

    def similarity_maps(self, patch_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(B, N, D) patches x (T, D) texts -> (B, T, H, W) maps: where each text matches the face."""
        return to_grid(patch_text_similarity(patch_features, text_features), self.grid)

    def forward(self, images: torch.Tensor, with_text_tokens: bool | None = None,
                image_encoder: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> MPAFEROutput:
        """``image_encoder``: a stand-in for ``encode_image`` with the same outputs, such as the bfloat16 copy
        of the image tower that CPU inference runs (``mpafer.bf16_inference``)."""
        encode = image_encoder or self.encode_image
        return self.classify(*encode(images), with_text_tokens=with_text_tokens)

    def classify(self, image_features: torch.Tensor, patch_features: torch.Tensor,
                 with_text_tokens: bool | None = None) -> MPAFEROutput:
        """CGLA over faces already encoded (``encode_image``'s pair): the rest of ``forward``."""
        if with_text_tokens is None:
            with_text_tokens = self.training and self.text_prompts is not None
        text = self.class_text_features(with_tokens=with_text_tokens)
        scores = cgla_scores(image_features, patch_features, text.features, self.config.topk)
        logits = self.logit_scale * scores.combined(self.config.use_global, self.config.use_local)
        return MPAFEROutput(
            logits=logits,
            global_scores=scores.global_scores,
            local_scores=scores.local_scores,
            maps=to_grid(scores.patch_similarity, self.grid),
            image_features=image_features,
            patch_features=patch_features,
            text=text,
        )


def resolve_classes(config: MPAFERConfig):
    """The bank's classes (or the config's subset of them, in its order), their prompt words and hard prompts."""
    bank = load_bank(config.bank)
    classes = list(config.classes or bank.classes)
    missing = [c for c in classes if c not in bank.classes]
    if missing:
        raise ValueError(f"classes {missing} are not in hard-prompt bank {bank.source} (has {list(bank.classes)})")
    bank = bank.subset(classes)
    return classes, list(bank.class_prompt_names), bank.prompts()


def create_model(config: MPAFERConfig, backbone: Backbone | None = None, device: str | torch.device = "cpu") -> MPAFER:
    """The factory: a config (and optionally an already-loaded backbone) in, an MPA-FER model out."""
    backbone = backbone or load_backbone(config.backbone, device=device)
    classes, prompt_names, hard = resolve_classes(config)
    model = MPAFER(config, backbone, classes, prompt_names, hard).to(device)
    if config.text_anchor and config.use_text_prompts:
        model.anchor_text_prompts()
    return model
