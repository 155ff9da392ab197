"""Heatmap display: one scale per face, the top-k cells of the local logit, contrasts."""
import numpy as np
import pytest
import torch
from PIL import Image

from mpafer.heatmaps import (HeatScale, contrast_map, contrast_overlay, heatmaps_on_one_scale, outline_cells,
                             signed_to_unit, topk_cells)


def test_one_scale_keeps_a_weak_class_cold():
    maps = np.zeros((2, 3, 3), dtype=np.float32)
    maps[0] = [[0.0, 0.1, 0.2], [0.3, 0.4, 0.5], [0.6, 0.7, 0.8]]  # the predicted class
    maps[1] = maps[0] / 8  # the same shape, much weaker
    heat, scale = heatmaps_on_one_scale(maps, 3, {0: "strong", 1: "weak"})
    assert (scale.low, scale.high) == pytest.approx((0.0, 0.8))
    assert heat["strong"].max() == pytest.approx(1.0) and heat["weak"].max() == pytest.approx(0.125)
    alone, _ = heatmaps_on_one_scale(maps, 3, {1: "weak"})
    assert np.allclose(alone["weak"], heat["weak"])  # drawing one class alone keeps the face's scale
    assert not HeatScale(0.5, 0.5).apply(maps).any()  # a flat face shows nothing
    assert "0.800" in scale.describe()


def test_topk_cells_are_the_cells_of_the_local_score(tiny_model):
    torch.manual_seed(0)
    with torch.no_grad():
        out = tiny_model(torch.randn(2, 3, tiny_model.image_size, tiny_model.image_size))
    k = tiny_model.config.topk
    for b in range(2):
        for c in range(tiny_model.num_classes):
            cells = topk_cells(out.maps[b, c], k)
            assert cells.shape == tiny_model.grid and cells.sum() == k
            assert out.maps[b, c][torch.from_numpy(cells)].mean() == pytest.approx(float(out.local_scores[b, c]),
                                                                                   abs=1e-5)
    assert topk_cells(np.zeros((2, 2)), 99).all()  # k is capped at the grid


def test_outline_cells_draws_only_the_border_of_the_marked_area():
    cells = np.zeros((4, 4), dtype=bool)
    cells[1:3, 1:3] = True  # a 2x2 block in a 4x4 grid of 10-px cells
    drawn = np.asarray(outline_cells(Image.new("RGB", (40, 40)), cells, colour=(255, 0, 0), width=1))
    assert drawn[10, 15].tolist() == [255, 0, 0] and drawn[15, 10].tolist() == [255, 0, 0]  # outer edges
    assert drawn[20, 15].tolist() == [0, 0, 0]  # no line between the two marked cells
    assert drawn[5, 5].tolist() == [0, 0, 0] and drawn[35, 35].tolist() == [0, 0, 0]  # far outside


def test_contrast_says_which_cells_argue_for_which_class():
    maps = np.zeros((3, 2, 2), dtype=np.float32)
    maps[0, 0, 0], maps[1, 1, 1] = 0.4, 0.2
    diff = contrast_map(maps, 0, 1)
    assert diff[0, 0] == pytest.approx(0.4) and diff[1, 1] == pytest.approx(-0.2) and diff[0, 1] == 0
    unit = signed_to_unit(diff)
    assert unit[0, 0] == 1.0 and unit[0, 1] == 0.5 and unit[1, 1] == pytest.approx(0.25)
    picture = np.asarray(contrast_overlay(Image.new("RGB", (20, 20), (128, 128, 128)), diff, alpha=1.0))
    assert picture[2, 2, 0] > picture[2, 2, 2]  # red: for the first class
    assert picture[17, 17, 2] > picture[17, 17, 0]  # blue: for the second
    assert (signed_to_unit(np.zeros((2, 2))) == 0.5).all()
