"""Soft prompts on a Hugging Face text tower (open_clip's ``HFTextEncoder``, e.g. all-MiniLM-L6-v2).

The same interface as ``mpafer.prompts.TextEncoder``, so ``TextPromptLearner`` and L_ta work on
either tower: CoOp's context vectors are substituted into the *word* embeddings after ``[CLS]``
and the model adds its own position and segment embeddings (``inputs_embeds``). A BERT-style
tower is bidirectional (``causal = False``): every output token, the context's included, depends
on the class name, so all of them may enter L_ta.
"""
from __future__ import annotations

import torch
from torch import nn


class HFTextEncoderView:
    causal = False

    def __init__(self, clip_model: nn.Module):
        tower = getattr(clip_model, "text", None)
        if tower is None or not hasattr(tower, "transformer") or not hasattr(tower, "pooler"):
            raise TypeError("not an open_clip HFTextEncoder text tower")
        self.tower = tower
        config = tower.config
        self.pad_id = int(config.pad_token_id or 0)
        # BERT's [SEP] ends the text; mpafer's masks look for it as the end-of-text token
        self.eos_id = int(getattr(config, "sep_token_id", None) or 102)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.tower.transformer.get_input_embeddings()

    @property
    def width(self) -> int:
        return self.word_embeddings.weight.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.word_embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.word_embeddings.weight.device

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(tokens)

    def encode_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor, return_tokens: bool = False):
        """(N, L, W) word embeddings + their (N, L) token ids -> (N, D) pooled, projected features.

        With ``return_tokens`` also every position's output, projected: (N, L, D).
        """
        mask = (tokens != self.pad_id).long()
        out = self.tower.transformer(inputs_embeds=embeddings, attention_mask=mask)
        pooled = self.tower.proj(self.tower.pooler(out, mask))
        if not return_tokens:
            return pooled
        return pooled, self.tower.proj(out.last_hidden_state)

    def encode_tokens(self, tokens: torch.Tensor, return_tokens: bool = False):
        return self.encode_embeddings(self.embed(tokens), tokens, return_tokens)


def is_hf_text_tower(clip_model: nn.Module) -> bool:
    from open_clip.hf_model import HFTextEncoder

    return isinstance(getattr(clip_model, "text", None), HFTextEncoder)
