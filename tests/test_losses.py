import math

import pytest
import torch
import torch.nn.functional as F

from mpafer.cgla import cgla_scores, topk_mean
from mpafer.losses import (LossConfig, classification_loss, late_interaction, prompt_alignment_loss,
                           prototype_alignment_loss, token_alignment_loss)


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_cross_entropy_accepts_indices_and_vote_distributions():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [0.25, 0.75]
    assert classification_loss(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))
    soft = torch.tensor([[0.5, 0.5]])
    assert classification_loss(logits, soft).item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)))


def test_late_interaction_by_hand():
    soft = unit([1, 0], [0, 1]).unsqueeze(0)  # one class, two tokens
    soft_mask = torch.tensor([[True, True]])
    hard = torch.stack([unit([1, 0], [1, 1]), unit([0, 1], [-1, 0])])  # two prompts, two tokens each
    hard_mask = torch.tensor([[True, True], [True, False]])  # second prompt's second token is padding
    sim = late_interaction(soft, soft_mask, hard, hard_mask)
    # prompt 0: token (1,0) best 1.0; token (0,1) best cos45 -> mean (1 + 0.7071)/2
    # prompt 1: only (0,1) is valid: token (1,0) -> 0, token (0,1) -> 1 -> mean 0.5
    torch.testing.assert_close(sim, torch.tensor([[(1 + 2 ** -0.5) / 2, 0.5]]))


def test_token_alignment_by_hand():
    soft = torch.stack([unit([1, 0]), unit([0, 1])])  # 2 classes x 1 token
    soft_mask = torch.ones(2, 1, dtype=torch.bool)
    hard = torch.stack([unit([1, 0]), unit([0, 1])])  # 2 prompts x 1 token
    hard_mask = torch.ones(2, 1, dtype=torch.bool)
    owner = torch.tensor([0, 1])
    loss = token_alignment_loss(soft, soft_mask, hard, hard_mask, owner, temperature=0.5)
    # per-class similarity is the identity; CE of logits [2, 0] for the right class
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    swapped = token_alignment_loss(soft, soft_mask, hard, hard_mask, torch.tensor([1, 0]), temperature=0.5)
    assert swapped.item() > loss.item()


def test_prompt_alignment_l1_and_contrastive_by_hand():
    soft, hard = unit([1, 0], [0, 1]), unit([0, 1], [0, 1])
    assert prompt_alignment_loss(soft, hard, "l1").item() == pytest.approx(0.5)  # |(1,-1)| + |(0,0)| over 4
    loss = prompt_alignment_loss(unit([1, 0], [0, 1]), unit([1, 0], [0, 1]), "contrastive", temperature=1.0)
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-5)


def test_prototype_alignment_by_hand():
    prototypes = unit([1, 0], [0, 1])
    features = unit([1, 0], [1, 0])
    labels = torch.tensor([0, 1])
    assert prototype_alignment_loss(features, prototypes, labels, "cosine").item() == pytest.approx(0.5)
    assert prototype_alignment_loss(features, prototypes, labels, "l1").item() == pytest.approx(0.5)
    votes = torch.tensor([[1.0, 0.0], [0.5, 0.5]])  # second sample: halfway between the prototypes
    mixed = prototype_alignment_loss(features, prototypes, votes, "cosine").item()
    assert mixed == pytest.approx((0 + (1 - 2 ** -0.5)) / 2, rel=1e-5)


def test_cgla_by_hand():
    image = unit([1, 0])
    patches = unit([1, 0], [0, 1], [1, 1]).unsqueeze(0)  # 3 patches
    texts = unit([1, 0], [0, 1])
    scores = cgla_scores(image, patches, texts, topk=2)
    torch.testing.assert_close(scores.global_scores, torch.tensor([[1.0, 0.0]]))
    expected_local = torch.tensor([[(1 + 2 ** -0.5) / 2, (1 + 2 ** -0.5) / 2]])
    torch.testing.assert_close(scores.local_scores, expected_local)
    assert topk_mean(torch.tensor([[1.0, 2.0]]), 99).item() == pytest.approx(1.5)  # k capped at N


def test_loss_config_rejects_unknown_modes():
    with pytest.raises(ValueError, match="prompt_mode"):
        LossConfig(prompt_mode="l2")
    with pytest.raises(ValueError, match="prototype_mode"):
        LossConfig(prototype_mode="mse")
