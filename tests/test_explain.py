"""Explanations read off one forward pass: maps, description scores per region, probes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mpafer.explain import (DESCRIPTION_TEMPLATE, Explainer, description_bank, normalize_map, overlay,
                            region_activation, upsample)
from mpafer.faces import face_regions, region_masks
from mpafer.predictor import untrained_model


@pytest.fixture(scope="module")
def model():
    return untrained_model()  # 112 px, 14x14 grid, ferplus bank


@pytest.fixture(scope="module")
def explainer(model):
    return Explainer(model)


@pytest.fixture(scope="module")
def masks(model):
    regions = face_regions({}, 224)  # canonical keypoints in a default-margin crop
    return region_masks(regions, *model.grid)


def test_upsample_keeps_the_grid_layout():
    grid = torch.zeros(2, 4, 4)
    grid[0, 0, 3] = 1.0  # top-right cell
    grid[1] = 0.5
    up = upsample(grid, 32)
    assert up.shape == (2, 32, 32)
    peak = np.unravel_index(int(up[0].argmax()), (32, 32))
    assert peak[0] < 8 and peak[1] >= 24  # still the top-right eighth
    assert torch.allclose(up[1], torch.full((32, 32), 0.5))


def test_normalize_map_ranges_and_flat_maps():
    values = np.array([[-0.2, 0.1], [0.3, 0.05]], dtype=np.float32)
    out = normalize_map(values)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.argmax(out) == np.argmax(values)
    assert not normalize_map(np.full((3, 3), 0.7)).any()
    assert np.isfinite(normalize_map(np.array([np.nan, 1.0, 2.0]))).all()


def test_overlay_blends_a_colormap_onto_the_crop():
    crop = Image.new("RGB", (20, 20), (0, 0, 0))
    heat = np.zeros((5, 5), dtype=np.float32)  # a different size: resized to the crop
    same = overlay(crop, heat, alpha=0.0)
    assert same.size == (20, 20) and same.mode == "RGB" and not np.asarray(same).any()
    coloured = np.asarray(overlay(crop, np.ones((20, 20)), alpha=1.0, cmap="jet"))
    assert tuple(coloured[0, 0]) == (128, 0, 0)  # the top of jet is dark red
    grey = overlay(Image.new("L", (8, 8), 200), np.zeros((8, 8)), alpha=0.5)
    assert grey.mode == "RGB"
    with pytest.raises(ValueError):
        overlay(crop, heat, alpha=1.5)


def test_description_bank_encodes_each_description_without_its_class(model):
    bank = description_bank(model)
    detailed = [p for p in model.hard_prompts if p.granularity == "detailed"]
    assert len(bank.items) == len({(p.class_index, p.description) for p in detailed}) > 0
    assert bank.features.shape == (len(bank.items), model.embed_dim)
    assert torch.allclose(bank.features.norm(dim=-1), torch.ones(len(bank.items)), atol=1e-5)
    first = bank.items[0]
    expected = model.encode_text([DESCRIPTION_TEMPLATE.format(description=first.text)])[0]
    assert "{" not in DESCRIPTION_TEMPLATE.replace("{description}", "")  # no class placeholder
    assert torch.allclose(bank.features[0], expected, atol=1e-5)
    # not the training prompt, which names the class
    with_class = [i for i, p in enumerate(model.hard_prompts) if p.description == first.text]
    trained = F.normalize(model.hard_text_features()[with_class].mean(0), dim=-1)
    assert not torch.allclose(bank.features[0], trained, atol=1e-3)
    explainer = Explainer(model)  # one encoding for the explainer's lifetime, no module-level cache
    assert explainer.bank is explainer.scorer.bank and len(explainer.bank.items) == len(bank.items)


def test_class_heatmaps_share_one_scale_per_face(model, explainer):
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, model.image_size, model.image_size))
    maps = out.maps[0]
    heatmaps = explainer.class_heatmaps(maps, 224)
    assert list(heatmaps) == list(model.classes)
    low, high = float(maps.min()), float(maps.max())
    for index, name in enumerate(model.classes):
        heat = heatmaps[name]
        assert heat.shape == (224, 224) and 0.0 <= heat.min() and heat.max() <= 1.0
        expected = np.clip((upsample(maps[index], 224).numpy() - low) / (high - low), 0, 1)
        assert np.allclose(heat, expected, atol=1e-5)
    hottest = int(maps.flatten(1).max(1).values.argmax())
    coolest = int(maps.flatten(1).max(1).values.argmin())
    assert heatmaps[model.classes[coolest]].max() < heatmaps[model.classes[hottest]].max()  # not each 0-1
    only = explainer.class_heatmaps(maps, 224, classes=[coolest])
    assert np.allclose(only[model.classes[coolest]], heatmaps[model.classes[coolest]])  # alone, same scale
    scale = explainer.heat_scale(maps)
    assert (scale.low, scale.high) == pytest.approx((low, high))


def _patches_matching(model, feature, cells):
    """(N, D) normalised patch features: ``feature`` on the masked cells, something unrelated elsewhere."""
    torch.manual_seed(1)
    count = model.grid[0] * model.grid[1]
    patches = torch.randn(count, feature.shape[0])
    patches = patches - (patches @ feature)[:, None] * feature  # orthogonal to the feature
    patches[torch.from_numpy(cells.reshape(-1))] = feature
    return F.normalize(patches, dim=-1)


def test_region_scores_find_the_description_painted_into_its_region(model, explainer, masks):
    bank = explainer.bank
    target = next(i for i, item in enumerate(bank.items) if item.region == "mouth")
    patches = _patches_matching(model, bank.features[target], masks["mouth"])
    other_class = (bank.items[target].class_index + 1) % model.num_classes
    scores = explainer.region_scores(patches, masks, predicted=other_class, per_region=3, predicted_per_region=2)

    mouth = scores["mouth"]
    favoured = [d for d in mouth if d.predicted]
    assert mouth[:2] == favoured  # the predicted class's descriptions come first ...
    assert len(favoured) == 2 and all(d.class_name == model.classes[other_class] for d in favoured)
    assert all(d.class_name != model.classes[other_class] for d in mouth[2:])  # ... then the other classes'
    best = mouth[2]
    assert (best.text, best.class_name, best.rank) == (bank.items[target].text, bank.items[target].class_name, 1)
    assert best.score == pytest.approx(1.0, abs=1e-4) and best.raw == best.score  # no calibration: raw
    assert not best.calibrated and best.method == "raw" and not explainer.calibrated
    assert best.of == sum(item.region == "mouth" for item in bank.items)
    for group in (mouth[:2], mouth[2:]):
        assert [d.rank for d in group] == sorted(d.rank for d in group)  # honest order within each
    assert set(scores) <= set(masks) and all(d.region == region for region, items in scores.items() for d in items)
    # the same description elsewhere on the face does not score in the mouth
    elsewhere = _patches_matching(model, bank.features[target], masks["forehead"])
    again = explainer.region_scores(elsewhere, masks, predicted=other_class)
    assert all(d.text != bank.items[target].text or d.score < 0.5 for d in again["mouth"])


def test_description_heatmap_lights_the_region_of_the_painted_description(model, explainer, masks):
    bank = explainer.bank
    target = next(i for i, item in enumerate(bank.items) if item.region == "mouth")
    patches = _patches_matching(model, bank.features[target], masks["mouth"])
    heat = explainer.description_heatmap(patches, masks, bank.items[target].class_index)
    assert heat.shape == model.grid and np.isfinite(heat).all()
    assert heat[masks["mouth"]].mean() > heat[masks["forehead"]].mean() + 0.1


def test_probe_maps_free_text_without_a_forward_pass(model, explainer, masks, monkeypatch):
    text = "wrinkled nose"
    feature = model.encode_text([DESCRIPTION_TEMPLATE.format(description=text)])[0]  # what a probe encodes
    patches = _patches_matching(model, feature, masks["nose"])
    classes = model.class_text_features().features

    def no_forward(*args, **kwargs):
        raise AssertionError("a probe must reuse the patch features, not run the image encoder")

    monkeypatch.setattr(model, "forward", no_forward)
    result = explainer.probe(patches, "  wrinkled   nose ", 224, classes, face_mask=masks["face"])
    assert result.text == text and result.prompt == "a photo of a face with wrinkled nose."
    assert result.heatmap.shape == (224, 224) and result.map.shape == model.grid
    assert np.allclose(result.map[masks["nose"]], 1.0, atol=1e-4)
    assert result.peak_activation == pytest.approx(1.0, abs=1e-4)
    assert result.mean_activation == pytest.approx(result.map[masks["face"]].mean(), abs=1e-6)
    expected = (feature @ classes.t()).tolist()
    assert list(result.class_similarity.values()) == pytest.approx(expected, abs=1e-5)
    assert result.closest_class == model.classes[int(np.argmax(expected))]
    assert result.to_dict()["closest_class"] == result.closest_class
    with pytest.raises(ValueError):
        explainer.probe(patches, "   ", 224, classes)


def test_probe_encodes_the_face_template_once(model, explainer, masks, monkeypatch):
    """The probe's words go through DESCRIPTION_TEMPLATE inside Explainer.probe, as the bank's
    descriptions do; text that already starts "a photo of" is encoded as it is, never wrapped twice."""
    patches = torch.randn(model.grid[0] * model.grid[1], model.embed_dim)
    classes = model.class_text_features().features
    encoded = []
    original = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda texts: encoded.extend(texts) or original(texts))
    cases = {
        "  wrinkled   nose. ": "a photo of a face with wrinkled nose.",
        "eyes wide open!": "a photo of a face with eyes wide open.",
        "a photo of a face with a big grin": "a photo of a face with a big grin",
        "A photo of someone frowning.": "A photo of someone frowning.",
        "a face with a frown": "a photo of a face with a face with a frown.",  # only "a photo of" is kept
    }
    for text, prompt in cases.items():
        result = explainer.probe(patches, text, 224, classes, face_mask=masks["face"])
        assert result.prompt == prompt and encoded[-1] == prompt, text
        assert result.to_dict()["prompt"] == prompt
    assert len(encoded) == len(cases)  # one encoding per probe
    assert encoded[0].count("a photo of") == 1
    # the probe's feature is the bank's feature when the words are a description's own
    bank = description_bank(model)
    words = bank.items[0].text
    probe_grid = explainer.probe(patches, words, 224, classes).map
    bank_grid = model.similarity_maps(patches[None], bank.features[:1])[0, 0].numpy()
    assert np.allclose(probe_grid, bank_grid, atol=1e-4)
    from mpafer.explain import probe_prompt

    assert probe_prompt("smile") == DESCRIPTION_TEMPLATE.format(description="smile")
    for empty in ("", "  ", " . ", "?!"):
        with pytest.raises(ValueError):
            probe_prompt(empty)


def test_region_activation_follows_the_heat(masks):
    heat = np.zeros((224, 224), dtype=np.float32)
    heat[:80] = 1.0  # the top of the crop: forehead and brows
    means = region_activation(heat, masks)
    assert means["forehead"] > 0.9 and means["mouth"] < 0.1
