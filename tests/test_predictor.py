"""Predictor: image in, one explained result per face out, from one batched forward pass."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ASTRONAUT, GROUP, REPO, run_in_threads
from mpafer.faces import REGION_NAMES
from mpafer.images import ImageError
from mpafer.predictor import UNTRAINED, FaceResult, Predictor, resolve_model, untrained_model



@pytest.fixture(scope="module")
def predictor():
    with Predictor(UNTRAINED) as shared:
        yield shared


@pytest.fixture
def count_forward(predictor, monkeypatch):
    calls = []
    original = predictor.model.forward

    def counted(images, *args, **kwargs):
        calls.append(images.shape[0])
        return original(images, *args, **kwargs)

    monkeypatch.setattr(predictor.model, "forward", counted)
    return calls


def test_untrained_fallback_is_flagged_and_reproducible(predictor):
    assert predictor.untrained and "untrained" in predictor.source
    assert predictor.model.image_size == 112 and predictor.model.grid == (14, 14)
    again = untrained_model()
    for (name, a), b in zip(predictor.model.learnable_state_dict().items(), again.learnable_state_dict().values()):
        assert torch.equal(a, b), name


def test_astronaut_gives_one_explained_face(predictor, count_forward):
    faces = predictor.predict(ASTRONAUT)
    assert count_forward == [1]
    assert len(faces) == 1
    face = faces[0]
    assert isinstance(face, FaceResult)
    x0, y0, x1, y1 = face.box
    assert 150 < (x0 + x1) / 2 < 300 and 60 < (y0 + y1) / 2 < 200  # her face, upper middle of 512x512
    assert face.label in predictor.classes and face.label == max(face.probabilities, key=face.probabilities.get)
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    explanation = face.explanation  # one per face, filled from the same pass
    assert explanation.classes == predictor.classes and explanation.label == face.label
    for name in predictor.classes:
        heat = explanation.heatmap(name)
        assert heat.shape == (224, 224) and 0.0 <= heat.min() and heat.max() <= 1.0
    assert face.crop.size == (224, 224) and face.crop.mode == "RGB"
    assert set(face.regions) <= set(REGION_NAMES) and {"mouth", "eyes", "brows"} <= set(face.regions)
    bank = predictor.explainer.bank.items
    for region, items in face.regions.items():
        written = {d.class_name for d in bank if d.region == region}
        assert any(d.predicted for d in items) == (face.label in written)  # the prediction is favoured
        own = [d for d in items if d.predicted]
        assert items[:len(own)] == own  # ... and listed first
        for group in (own, items[len(own):]):
            assert [d.rank for d in group] == sorted(d.rank for d in group)
    assert face.gradcam is None


def test_group_is_classified_in_one_batch(predictor, count_forward):
    faces = predictor.predict(GROUP)
    assert len(faces) == 4
    assert count_forward == [4]  # one forward pass for all four crops
    # reading order: the top row left to right, then the bottom row
    assert [(f.box[1] > 400, f.box[0] > 400) for f in faces] == [(False, False), (False, True), (True, False), (True, True)]
    predictor.probe(faces[2], "wrinkled nose")
    faces[1].explanation.heatmap(predictor.classes[3])
    assert count_forward == [4]  # probes and other classes reuse the pass


def test_results_match_the_model_on_the_same_crop(predictor):
    face = predictor.predict(ASTRONAUT)[0]
    run = predictor.bf16_tower or predictor.model  # what "auto" runs on this CPU
    with torch.no_grad():
        direct = run(predictor.preprocess([face.crop])).probabilities[0]
    assert list(face.probabilities.values()) == pytest.approx(direct.tolist(), abs=1e-5)


@pytest.mark.parametrize("wanted", ["fp32", "bf16"])
def test_precision_runs_the_classifying_pass_as_asked_and_hands_on_float32(predictor, monkeypatch, wanted):
    import mpafer.precision

    monkeypatch.setattr(mpafer.precision, "native_bf16", lambda device: True)
    chosen = Predictor(predictor.model, detector=predictor.detector, precision=wanted)
    assert chosen.precision == wanted
    seen = []
    original = chosen.model.forward

    def watched(images, *args, **kwargs):  # on a CPU bf16 is the bfloat16 image-tower copy, never autocast
        seen.append((torch.is_autocast_enabled("cpu"), kwargs.get("image_encoder")))
        return original(images, *args, **kwargs)

    monkeypatch.setattr(chosen.model, "forward", watched)
    batch = chosen.preprocess([Image.open(ASTRONAUT).convert("RGB").resize((224, 224))])
    output, probabilities = chosen.forward(batch)
    tower = chosen.bf16_tower
    assert (tower is not None) == (wanted == "bf16")
    assert seen == [(False, tower.encode_image if tower else None)]
    assert all(t.dtype == torch.float32 for t in (output.logits, output.maps, output.patch_features,
                                                   output.image_features, probabilities))
    with torch.no_grad():
        exact = chosen.model(batch).probabilities  # float32, outside any autocast
    tolerance = 1e-5 if wanted == "fp32" else 0.05  # bfloat16 keeps about 3 significant digits
    assert probabilities.tolist() == [pytest.approx(row, abs=tolerance) for row in exact.tolist()]


@pytest.mark.parametrize("native", [True, False])
def test_auto_runs_the_bf16_tower_only_where_the_cpu_computes_bf16(predictor, monkeypatch, native):
    import mpafer.precision

    monkeypatch.setattr(mpafer.precision, "_native_bf16", lambda kind: native)
    chosen = Predictor(predictor.model, detector=predictor.detector)
    assert chosen.precision == ("bf16" if native else "fp32")
    assert (chosen.bf16_tower is not None) == native


def test_fast_path_skips_descriptions(predictor):
    face = predictor.predict(ASTRONAUT, explain=False)[0]
    assert face.regions == {} and face.explanation.descriptions == {}
    other = predictor.classes[(predictor.classes.index(face.label) + 1) % len(predictor.classes)]
    assert face.explanation.heatmap(other).shape == (224, 224)  # every class map is still there
    with pytest.raises(ValueError):
        face.explanation.heatmap("boredom")


def test_no_face_and_bad_input(predictor):
    assert predictor.predict(Image.new("RGB", (320, 240), (30, 120, 200))) == []
    with pytest.raises(ImageError):
        predictor.predict(b"this is not an image")
    with pytest.raises(ImageError):
        predictor.predict(REPO / "pyproject.toml")


def test_gradcam_only_when_asked(predictor):
    face = predictor.predict(ASTRONAUT, gradcam=True)[0]
    assert face.gradcam.shape == (224, 224) and face.gradcam.max() == pytest.approx(1.0)
    assert set(face.gradcam_regions) == set(face.region_masks)


def test_class_views_share_one_scale_and_show_the_logit_cells(predictor):
    face = predictor.predict(ASTRONAUT, explain=False)[0]
    explanation = face.explanation
    scale = explanation.scale
    assert (scale.low, scale.high) == pytest.approx((face.maps.min(), face.maps.max()))
    heats = {c: explanation.heatmap(c) for c in predictor.classes}
    drawn = predictor.explainer.class_heatmaps(torch.from_numpy(face.maps), 224)
    assert all(np.allclose(heats[c], drawn[c], atol=1e-6) for c in predictor.classes)
    peaks = sorted(float(h.max()) for h in heats.values())
    assert peaks[-1] > 0.95 and peaks[0] < peaks[-1] - 0.05  # not every class stretched to its own range
    cells = explanation.cells()
    assert cells.shape == predictor.model.grid and cells.sum() == predictor.model.config.topk
    other = predictor.classes[(predictor.classes.index(face.label) + 1) % len(predictor.classes)]
    diff = explanation.contrast(face.label, other)
    index = predictor.classes.index
    assert np.allclose(diff, face.maps[index(face.label)] - face.maps[index(other)])
    assert predictor.gradcam_map(face, other).shape == (224, 224) and face.gradcam is None


def test_a_decoded_picture_is_not_decoded_again(predictor, monkeypatch):
    import mpafer.predictor as module
    from mpafer.images import load_image

    picture = load_image(GROUP)
    decoded = []
    monkeypatch.setattr(module, "load_image", lambda *a, **k: decoded.append(a) or load_image(*a, **k))
    faces = predictor.predict_picture(picture, explain=False)
    assert len(faces) == 4 and decoded == []  # taken as it is
    assert [f.box for f in predictor.predict(GROUP, explain=False)] == [f.box for f in faces] and len(decoded) == 1


def test_explain_fills_the_explanation_once(predictor, count_forward, monkeypatch):
    face = predictor.predict(ASTRONAUT, explain=False)[0]
    cams = []
    compute = predictor._gradcams
    monkeypatch.setattr(predictor, "_gradcams", lambda faces, names: cams.extend(names) or compute(faces, names))
    other = next(c for c in predictor.classes if c != face.label)
    explanation = predictor.explain(face, gradcam=[face.label, other], occlusion=True)
    # the prediction, the occlusion batch (the face and six blurred copies), one Grad-CAM pass for both classes
    assert explanation is face.explanation and count_forward == [1, 7, 2] and cams == [face.label, other]
    assert explanation.occlusion.target == predictor.classes.index(face.label)
    assert explanation.gradcam(other).shape == (224, 224) and face.gradcam is not None
    assert set(explanation.gradcam_regions(other)) == set(face.region_masks)
    predictor.explain(face, gradcam=other, occlusion=True)
    predictor.explain(face, gradcam=True)
    assert count_forward == [1, 7, 2] and cams == [face.label, other]  # nothing rerun
    data = json.loads(json.dumps(face.to_dict()))
    assert data["occlusion"]["target"] == face.label and set(data["gradcam_regions"]) == set(face.region_masks)


def test_occlusion_is_one_forward_pass(predictor, count_forward):
    face = predictor.predict(ASTRONAUT, explain=False)[0]
    result = predictor.occlusion(face)
    assert count_forward == [1, 7]  # the prediction, then the face and its six occluded copies at once
    assert predictor.classes[result.target] == face.label
    assert result.probability == pytest.approx(face.confidence, abs=1e-5)
    assert {r.region for r in result.regions} == {"brows", "eyes", "nose", "mouth", "cheeks", "forehead"}
    assert [r.change for r in result.regions] == sorted(r.change for r in result.regions)


def test_description_calibration_is_read_from_the_checkpoint_folder(predictor, tmp_path, tiny_model):
    from mpafer.checkpoint import save_checkpoint
    from mpafer.description_calibration import fit_calibration, save_calibration
    from mpafer.description_scores import DescriptionScorer

    folder = save_checkpoint(tiny_model, tmp_path / "ckpt")
    plain = Predictor(str(folder), detector=predictor.detector)
    assert not plain.explainer.calibrated  # no statistics stored: raw scores, flagged
    bank = DescriptionScorer(plain.model).bank
    region = np.random.default_rng(0).normal(0.1, 0.05, (20, len(bank.items)))
    save_calibration(fit_calibration(plain.model, bank, region), folder)
    calibrated = Predictor(str(folder), detector=predictor.detector)
    assert calibrated.explainer.calibrated
    face = calibrated.predict(ASTRONAUT)[0]
    assert all(d.calibrated and d.method == "zscore" for items in face.regions.values() for d in items)


def test_to_dict_is_json_safe(predictor):
    face = predictor.predict(ASTRONAUT)[0]
    data = json.loads(json.dumps(face.to_dict()))
    assert data["label"] == face.label and "heatmaps" not in data
    assert len(data["box"]) == 4 and len(data["crop_box"]) == 4
    assert min(d["rank"] for d in data["regions"]["mouth"]) == 1
    full = json.loads(json.dumps(face.to_dict(heatmaps=True)))
    assert np.asarray(full["heatmaps"][face.label]).shape == (14, 14)
    assert max(np.max(m) for m in full["heatmaps"].values()) == pytest.approx(1.0, abs=1e-3)  # one scale
    assert full["heat_scale"] == pytest.approx([face.maps.min(), face.maps.max()], abs=1e-4)


def test_max_faces_keeps_the_largest_and_counts_them_all(predictor):
    small = Predictor(predictor.model, detector=predictor.detector, max_faces=2)
    faces = small.predict(GROUP, explain=False)
    assert len(faces) == 2 and faces.found == 4
    everyone = predictor.predict(GROUP, explain=False)
    assert everyone.found == 4
    area = lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])  # noqa: E731
    assert {f.box for f in faces} == {f.box for f in sorted(everyone, key=area)[-2:]}


def test_concurrent_calls_agree_with_serial_ones(predictor):
    expected = [f.probabilities for f in predictor.predict(GROUP, explain=False)]
    results = []
    errors = run_in_threads(
        lambda: results.append([f.probabilities for f in predictor.predict(GROUP, explain=False)]))
    assert not errors and len(results) == 4
    for probabilities in results:
        for got, want in zip(probabilities, expected):
            assert list(got.values()) == pytest.approx(list(want.values()), abs=1e-5)


def test_default_checkpoint_or_fallback(monkeypatch, tmp_path, tiny_model):
    import mpafer.defaults
    from mpafer.checkpoint import save_checkpoint

    monkeypatch.setattr(mpafer.defaults, "default_checkpoint", lambda: None)
    model, source, untrained = resolve_model(None)
    assert untrained and "untrained" in source

    folder = save_checkpoint(tiny_model, tmp_path / "ckpt")
    monkeypatch.setattr(mpafer.defaults, "default_checkpoint", lambda: folder)
    model, source, untrained = resolve_model(None)
    assert not untrained and source == str(folder)
    assert torch.equal(model.learnable_state_dict()["visual_prompts.prompts"],
                       tiny_model.learnable_state_dict()["visual_prompts.prompts"])


def test_cli_json_table_and_bad_image(capsys):
    from mpafer.cli_predict import main

    assert main([str(GROUP), "--checkpoint", UNTRAINED, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["untrained"] and len(data["faces"]) == 4 and data["faces"][0]["label"] in data["classes"]

    assert main([str(ASTRONAUT), "--checkpoint", UNTRAINED]) == 0
    table = capsys.readouterr().out
    assert "WARNING: untrained" in table and "face 1:" in table and "mouth" in table

    assert main([str(REPO / "pyproject.toml")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1
