"""The real FERPlus pack loads and one batch goes through MPA-FER (skipped when the pack is absent)."""
import pytest
import torch
import torch.nn.functional as F

from conftest import ferplus_dir

FERPLUS = ferplus_dir()
pytestmark = pytest.mark.skipif(FERPLUS is None, reason="FERPlus pack not found (../shared/data/ferplus)")


def test_one_real_batch_through_the_model(tiny_model, tmp_path):
    from mpafer.data import load_dataset

    test = load_dataset("ferplus", FERPLUS, "test", image_size=None, cache_dir=tmp_path, progress=False)
    assert len(test) == 3152 and test.classes == tiny_model.classes
    images = torch.from_numpy(test.images[:16]).permute(0, 3, 1, 2).float() / 255  # uint8 NHWC -> float NCHW
    images = F.interpolate(images, size=tiny_model.image_size, mode="bilinear", antialias=True)
    mean = torch.tensor(tiny_model.backbone_info.mean)[:, None, None]
    std = torch.tensor(tiny_model.backbone_info.std)[:, None, None]
    with torch.no_grad():
        out = tiny_model.eval()((images - mean) / std)
    assert out.logits.shape == (16, 8) and torch.isfinite(out.logits).all()
    assert out.maps.shape == (16, 8, 4, 4)
