"""The input protocol travels with the checkpoint and both the predictor and evaluation apply it."""
import numpy as np
import pytest
import torch
from PIL import Image

from mpafer.transforms import to_model_input
from mpafer.checkpoint import load_checkpoint, save_checkpoint
from mpafer.input_protocol import InputProtocol, to_grey


def test_grey_matches_pil_luminance_for_arrays_and_tensors():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 9, 7, 3), dtype=np.uint8)
    expected = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])
    grey = to_grey(rgb)
    assert grey.shape == rgb.shape and grey.dtype == np.uint8
    assert np.abs(grey[..., 0].astype(int) - expected).max() <= 1
    assert (grey[..., 0] == grey[..., 2]).all()
    assert torch.equal(to_grey(torch.from_numpy(rgb)), torch.from_numpy(grey))


def test_protocol_round_trips_through_a_checkpoint_and_rejects_nonsense(tiny_model, tmp_path):
    tiny_model.config.input = InputProtocol(grey=True, margin=0.1, shift_y=0.05, tta_flip=True)
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.input == InputProtocol(grey=True, margin=0.1, shift_y=0.05, tta_flip=True)
    with pytest.raises(ValueError, match="unknown input protocol keys"):
        InputProtocol.from_dict({"grey": True, "colour": False})
    with pytest.raises(ValueError, match="margin"):
        InputProtocol(margin=-1)


def test_evaluation_follows_the_protocol(tiny_model):
    from mpafer.evaluate import predict_probabilities

    faces = np.random.default_rng(1).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    tiny_model.config.input = InputProtocol(grey=True)
    as_grey = predict_probabilities(tiny_model, faces, progress=False)
    assert torch.allclose(as_grey, predict_probabilities(tiny_model, to_grey(faces), progress=False))
    tiny_model.config.input = InputProtocol(grey=False, tta_flip=True)
    flipped = predict_probabilities(tiny_model, faces, progress=False)
    assert torch.allclose(flipped, predict_probabilities(tiny_model, faces, tta_flip=True, progress=False))
    assert not torch.allclose(flipped, predict_probabilities(tiny_model, faces, tta_flip=False, progress=False))


def test_predictor_classifies_crops_with_the_protocol(tiny_model):
    from mpafer.predictor import Predictor

    tiny_model.config.input = InputProtocol(grey=True, tta_flip=True, margin=0.1)
    crop = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with Predictor(tiny_model) as predictor:
        assert predictor.margin == 0.1
        [result] = predictor.predict_crops([crop])
        assert result.label in tiny_model.classes and abs(sum(result.probabilities.values()) - 1) < 1e-5
        side, info = tiny_model.image_size, tiny_model.backbone_info
        small = np.asarray(crop.resize((side, side), Image.Resampling.BICUBIC, reducing_gap=2.0))[None]
        expected = to_model_input(to_grey(small), side, info.mean, info.std)
        assert torch.allclose(predictor.preprocess([crop]), expected)
        assert predictor.predict_crops([]) == []
