"""Faithfulness measures on small hand-made cases: orders, curves, areas, intervals, ranks."""
import math

import numpy as np
import pytest
import torch

from mpafer.faithfulness import (bootstrap_interval, cells_to_pixels, curve_area, deletion_insertion_inputs,
                                 heat_order, randomized_prompts, spearman, step_masks)


def test_heat_order_is_hottest_first_with_nan_last():
    heat = np.array([[0.1, 0.9], [np.nan, 0.5]])
    order = heat_order(heat, np.random.default_rng(0))
    assert order.tolist() == [1, 3, 0, 2]
    tied = {tuple(heat_order(np.zeros(4), np.random.default_rng(s))) for s in range(10)}
    assert len(tied) > 1  # ties are not always taken in reading order


def test_step_masks_remove_a_tenth_at_a_time():
    masks = step_masks(np.arange(20)[::-1], steps=10)
    assert masks.shape == (11, 20)
    assert masks.sum(1).tolist() == list(range(0, 21, 2))
    assert masks[1].tolist() == [False] * 18 + [True, True]  # the first two of the order


def test_deletion_and_insertion_sequences():
    image, baseline = torch.ones(3, 4, 4), torch.zeros(3, 4, 4)
    order = np.array([0, 1, 2, 3])  # a 2x2 grid of 2-px cells, reading order
    batch = deletion_insertion_inputs(image, baseline, order, (2, 2), steps=4)
    deletion, insertion = batch[:5], batch[5:]
    assert torch.equal(deletion[0], image) and torch.equal(deletion[-1], baseline)
    assert torch.equal(insertion[0], baseline) and torch.equal(insertion[-1], image)
    assert deletion[1][0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert torch.equal(insertion[1], 1 - deletion[1])
    assert cells_to_pixels(np.eye(4, dtype=bool)[:1], (2, 2), 4)[0, 0, :2, :2].all()


def test_curve_area():
    assert curve_area(np.ones(11)) == pytest.approx(1.0)
    assert curve_area(np.linspace(1, 0, 11)) == pytest.approx(0.5)
    assert curve_area(np.stack([np.zeros(11), np.ones(11)])).tolist() == pytest.approx([0.0, 1.0])


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = bootstrap_interval(rng.normal(1.0, 1.0, 50))
    large = bootstrap_interval(rng.normal(1.0, 1.0, 2000))
    assert small[1] < small[0] < small[2] and large[1] < 1.0 < large[2]
    assert large[2] - large[1] < (small[2] - small[1]) / 3
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([np.nan])))


def test_spearman():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0])) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(spearman(a, np.ones((2, 2))))
    assert spearman(np.array([1.0, np.nan, 3.0]), np.array([2.0, 5.0, 4.0])) == pytest.approx(1.0)


def test_randomized_prompts_redraw_the_prompts_and_keep_the_backbone(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.learnable_state_dict().items()}
    fresh = randomized_prompts(tiny_model, seed=1)
    assert fresh.clip is tiny_model.clip  # shared, not copied
    for name, value in fresh.learnable_state_dict().items():
        assert value.shape == before[name].shape and not torch.allclose(value, before[name])
        assert torch.equal(tiny_model.learnable_state_dict()[name], before[name])  # the original is untouched
    again = randomized_prompts(tiny_model, seed=1)
    for a, b in zip(fresh.learnable_state_dict().values(), again.learnable_state_dict().values()):
        assert torch.equal(a, b)  # seeded
    image = torch.randn(1, 3, tiny_model.image_size, tiny_model.image_size)
    with torch.no_grad():
        assert not torch.allclose(fresh(image).maps, tiny_model(image).maps)
