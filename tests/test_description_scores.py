"""Description scores that mean something: class-free features, calibration against validation
faces, a graceful fallback, and maps whose region means are the scores."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mpafer.description_calibration import (CALIBRATION_FILE, DescriptionCalibration, explanation_fingerprint,
                                            fit_calibration, load_calibration, save_calibration)
from mpafer.description_scores import DescriptionScorer
from mpafer.explain import Explainer
from mpafer.faces import face_regions, region_masks
from mpafer.predictor import untrained_model


@pytest.fixture(scope="module")
def model():
    return untrained_model()


@pytest.fixture(scope="module")
def masks(model):
    return region_masks(face_regions({}, 224), *model.grid)


def _faces(model, n, seed):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, model.grid[0] * model.grid[1], model.embed_dim, generator=generator), dim=-1)


def _calibration(model, scorer, means, stds):
    stats = {item.key: (float(m), float(s)) for item, m, s in zip(scorer.bank.items, means, stds)}
    return DescriptionCalibration(explanation_fingerprint(model), 100, stats)


def test_zscore_ranks_by_how_unusual_the_match_is(model, masks):
    raw = DescriptionScorer(model, method="raw")
    face = _faces(model, 1, seed=0)[0]
    mouth = np.flatnonzero(raw.bank.regions == "mouth")
    region = raw.evidence(face, masks).region[0].numpy()
    best_raw, weakest = int(mouth[region[mouth].argmax()]), int(mouth[region[mouth].argmin()])
    # on typical faces the raw winner always matches this well; the weakest one never matches at all
    means = np.full(len(raw.bank.items), 0.0)
    stds = np.full(len(raw.bank.items), 1.0)
    means[best_raw], stds[best_raw] = region[best_raw], 0.01
    means[weakest], stds[weakest] = region[weakest] - 1.0, 0.01
    scorer = DescriptionScorer(model, _calibration(model, raw, means, stds))
    assert scorer.method == "zscore" and scorer.calibrated
    table = scorer.table(face, masks, predicted=raw.bank.items[weakest].class_index)["mouth"]
    by_text = {d.text: d for d in table}
    top = by_text[raw.bank.items[weakest].text]
    assert top.rank == 1 and top.score == pytest.approx(100.0, rel=1e-3) and top.calibrated
    assert top.raw == pytest.approx(region[weakest], abs=1e-6)
    assert all(d.text != raw.bank.items[best_raw].text or d.rank > 1 for d in table)


def test_without_statistics_scores_fall_back_to_raw_and_say_so(model, masks, tmp_path):
    assert load_calibration(tmp_path, model) is None  # no file
    scorer = DescriptionScorer(model, None, method="zscore")
    assert scorer.requested == "zscore" and scorer.method == "raw" and not scorer.calibrated
    face = _faces(model, 1, seed=1)[0]
    row = scorer.table(face, masks, predicted=0)["eyes"][0]
    assert not row.calibrated and row.score == row.raw and row.to_dict()["calibrated"] is False
    incomplete = DescriptionCalibration(explanation_fingerprint(model), 10, {})
    assert DescriptionScorer(model, incomplete).method == "raw"  # statistics missing for descriptions
    with pytest.raises(ValueError):
        DescriptionScorer(model, method="softmax")


def test_region_minus_face_needs_no_statistics(model, masks):
    scorer = DescriptionScorer(model, method="region_minus_face")
    face = _faces(model, 1, seed=2)[0]
    evidence = scorer.evidence(face, masks)
    assert scorer.calibrated
    expected = evidence.region - evidence.face
    assert torch.allclose(scorer.region_scores(evidence), expected, atol=1e-6)
    uniform = torch.ones_like(face) / face.shape[-1] ** 0.5  # every patch alike: no region stands out
    assert torch.allclose(scorer.region_scores(scorer.evidence(uniform, masks)), torch.zeros(1), atol=1e-5)


def test_fit_save_and_load_beside_a_checkpoint(model, masks, tmp_path):
    scorer = DescriptionScorer(model, method="raw")
    region = scorer.evidence(_faces(model, 30, seed=3), masks).region.numpy()
    calibration = fit_calibration(model, scorer.bank, region, source="test faces")
    first = scorer.bank.items[0].key
    assert calibration.stats[first][0] == pytest.approx(region[:, 0].mean(), abs=1e-6)
    assert calibration.stats[first][1] == pytest.approx(region[:, 0].std(ddof=1), abs=1e-6)
    path = save_calibration(calibration, tmp_path)
    assert path == tmp_path / CALIBRATION_FILE
    loaded = load_calibration(tmp_path, model)
    assert loaded.faces == 30 and loaded.stats[first] == pytest.approx(calibration.stats[first], abs=1e-5)
    z = DescriptionScorer(model, loaded)
    scores = z.region_scores(z.evidence(_faces(model, 30, seed=3), masks)).numpy()
    assert np.abs(scores.mean(0)).max() < 1e-3 and np.allclose(scores.std(0, ddof=1), 1.0, atol=1e-3)
    with pytest.raises(ValueError):
        fit_calibration(model, scorer.bank, region[:1])


def test_a_calibration_of_another_model_or_a_broken_file_is_ignored(model, masks, tmp_path):
    scorer = DescriptionScorer(model, method="raw")
    region = scorer.evidence(_faces(model, 5, seed=4), masks).region.numpy()
    save_calibration(fit_calibration(model, scorer.bank, region), tmp_path)
    other = untrained_model()
    with torch.no_grad():
        other.visual_prompts.prompts.add_(0.1)  # trained further: the patch features moved
    assert explanation_fingerprint(other) != explanation_fingerprint(model)
    assert load_calibration(tmp_path, other) is None
    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    assert load_calibration(tmp_path, model) is None
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"format": "something else"}))
    assert load_calibration(tmp_path, model) is None


def test_class_map_averages_the_class_descriptions_covering_each_cell(model, masks):
    scorer = DescriptionScorer(model, method="region_minus_face")
    face = _faces(model, 1, seed=5)[0]
    evidence = scorer.evidence(face, masks)
    klass = 3
    heat = scorer.class_map(evidence, klass)[0].numpy()
    rows = [k for k, item in enumerate(scorer.bank.items) if item.class_index == klass]
    cosines, face_mean = evidence.cosines[0].numpy(), evidence.face[0].numpy()
    for cell in range(heat.size):  # the same thing, one cell at a time
        covering = [k for k in rows if masks[scorer.bank.items[k].region].reshape(-1)[cell]]
        if covering:
            expected = np.mean([cosines[k, cell] - face_mean[k] for k in covering])
            assert heat[cell] == pytest.approx(expected, abs=1e-5)
        else:
            assert np.isnan(heat[cell])
    assert np.isnan(heat).any() and np.isfinite(heat).any()


def test_explainer_passes_calibration_through(model, masks):
    scorer = DescriptionScorer(model, method="raw")
    region = scorer.evidence(_faces(model, 10, seed=6), masks).region.numpy()
    explainer = Explainer(model, fit_calibration(model, scorer.bank, region))
    assert explainer.calibrated
    row = explainer.region_scores(_faces(model, 1, seed=7)[0], masks, predicted=2)["mouth"][0]
    assert row.method == "zscore" and row.predicted
