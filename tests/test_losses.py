import math

import pytest
import torch
import torch.nn.functional as F

from mpafer.cgla import cgla_scores, topk_mean
from mpafer.losses import (LossConfig, classification_loss, late_interaction, prompt_alignment_loss,
                           prototype_alignment_loss, token_alignment_loss)
from mpafer.model import create_model
from mpafer.objective import gradient_norms, mpafer_loss
from mpafer.prototypes import compute_prototypes


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
    # each hard prompt sees its own class's soft prompt at 1 and the other at 0: CE of logits [2, 0]
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    swapped = token_alignment_loss(soft, soft_mask, hard, hard_mask, torch.tensor([1, 0]), temperature=0.5)
    assert swapped.item() > loss.item()


def test_token_alignment_is_per_hard_prompt_not_per_soft_prompt():
    """Three hard prompts, two of class 0, one of them matching class 1's soft prompt better."""
    soft = torch.stack([unit([1, 0]), unit([0, 1])])  # soft prompts of classes 0 and 1
    hard = torch.stack([unit([1, 0]), unit([0, 1]), unit([0, 1])])
    owner = torch.tensor([0, 0, 1])
    ones = torch.ones(3, 1, dtype=torch.bool)
    loss = token_alignment_loss(soft, ones[:2], hard, ones, owner, temperature=0.5)
    # sim (soft x hard) = [[1, 0, 0], [0, 1, 1]]; per hard prompt, logits over the 2 soft prompts / 0.5:
    # p0 [2, 0] -> class 0, p1 [0, 2] -> class 0, p2 [0, 2] -> class 1
    paper = (2 * math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 3
    assert loss.item() == pytest.approx(paper, rel=1e-5)
    # the old direction: hard prompts averaged per class, softmax over hard classes for each soft
    # prompt: [[0.5, 0], [0.5, 1]] / 0.5 -> log(1 + e^-1) for both rows
    old = math.log(1 + math.exp(-1))
    per_class = late_interaction(soft, ones[:2], hard, ones) @ F.one_hot(owner).float() / torch.tensor([2.0, 1.0])
    assert F.cross_entropy(per_class / 0.5, torch.arange(2)).item() == pytest.approx(old, rel=1e-5)
    assert abs(paper - old) > 0.4


def test_prompt_alignment_l1_and_contrastive_by_hand():
    soft, hard = unit([1, 0], [0, 1]), unit([0, 1], [0, 1])
    assert prompt_alignment_loss(soft, hard, "l1").item() == pytest.approx(1.0)  # |(1,-1)| = 2 and 0, mean over 2
    assert prompt_alignment_loss(soft, hard, "l1", l1_reduction="mean").item() == pytest.approx(0.5)  # over 4
    loss = prompt_alignment_loss(unit([1, 0], [0, 1]), unit([1, 0], [0, 1]), "contrastive", temperature=1.0)
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-5)


def test_prototype_alignment_by_hand():
    prototypes = unit([1, 0], [0, 1])
    features = unit([1, 0], [1, 0])
    labels = torch.tensor([0, 1])
    assert prototype_alignment_loss(features, prototypes, labels, "cosine").item() == pytest.approx(0.5)
    assert prototype_alignment_loss(features, prototypes, labels, "l1").item() == pytest.approx(1.0)  # (0 + 2) / 2
    assert prototype_alignment_loss(features, prototypes, labels, "l1", "mean").item() == pytest.approx(0.5)
    votes = torch.tensor([[1.0, 0.0], [0.5, 0.5]])  # second sample: halfway between the prototypes
    mixed = prototype_alignment_loss(features, prototypes, votes, "cosine").item()
    assert mixed == pytest.approx((0 + (1 - 2 ** -0.5)) / 2, rel=1e-5)


def test_l1_terms_grow_with_the_feature_dimension_as_a_sum_does():
    torch.manual_seed(0)
    a, b = torch.randn(3, 16), torch.randn(3, 16)
    wide_a, wide_b = a.repeat(1, 4), b.repeat(1, 4)  # the same rows at D = 64: each distance 4x
    labels = torch.tensor([0, 1, 2])
    for loss in (lambda x, y, r: prompt_alignment_loss(x, y, "l1", l1_reduction=r),
                 lambda x, y, r: prototype_alignment_loss(x, y, labels, "l1", r)):
        narrow, wide = loss(a, b, "sum"), loss(wide_a, wide_b, "sum")
        torch.testing.assert_close(wide, 4 * narrow)
        torch.testing.assert_close(narrow, (a - b).abs().sum(-1).mean())
        torch.testing.assert_close(loss(wide_a, wide_b, "mean"), loss(a, b, "mean"))  # the element mean does not


def test_alignment_gradients_are_within_10x_of_ce_at_initialisation(tiny_config):
    """beta = gamma = 1 on mpafer-tiny, at initialisation: the regularisers are not inert.

    L_t reaches only the text context and L_v only the visual prompts, while CE reaches both; on
    this random backbone CE's gradient on the text context is ~70x its gradient on the visual
    prompts, so L_v is compared with CE on the parameters it acts on (the visual prompts), and L_t
    on all of them (which is also its own). All the norms are in the failure message.
    """
    assert tiny_config.loss.beta == tiny_config.loss.gamma == 1.0
    torch.manual_seed(0)
    model = create_model(tiny_config)
    images = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(32) % 8
    compute_prototypes(model, [(images, labels)], progress=False)
    terms = mpafer_loss(model, model.train()(images[:16]), labels[:16])
    params = model.learnable_parameters()
    every = gradient_norms(terms, params.values(), tiny_config.loss)
    visual = gradient_norms(terms, [params["visual_prompts.prompts"]], tiny_config.loss)
    message = (f"on all learnable parameters: CE {every['ce']:.4g}, L_t {every['t']:.4g}, L_v {every['v']:.4g}; "
               f"on the visual prompts: CE {visual['ce']:.4g}, L_v {visual['v']:.4g}")
    assert 0.1 <= every["t"] / every["ce"] <= 10, message
    assert 0.1 <= visual["v"] / visual["ce"] <= 10, message


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
    with pytest.raises(ValueError, match="l1_reduction"):
        LossConfig(l1_reduction="max")
