"""The occlusion check: blur each facial region out, classify all copies in one batch."""
import numpy as np
import pytest
import torch

from mpafer.dataset_faces import framed_face_box, framed_region_masks
from mpafer.faces import face_regions
from mpafer.input_protocol import InputProtocol
from mpafer.occlusion import OCCLUDED_REGIONS, gaussian_blur, occlusion_effects, pixel_masks

SIZE = 48


@pytest.fixture(scope="module")
def masks():
    return pixel_masks(face_regions({}, SIZE), SIZE)


def test_blur_keeps_flat_images_and_removes_detail():
    flat = torch.full((1, 3, SIZE, SIZE), 0.3)
    assert torch.allclose(gaussian_blur(flat, 4.0), flat, atol=1e-6)
    stripes = torch.zeros(1, 1, SIZE, SIZE)
    stripes[..., ::2] = 1.0
    blurred = gaussian_blur(stripes, 4.0)
    assert blurred.shape == stripes.shape and blurred.std() < 0.05 * stripes.std()
    assert blurred.mean() == pytest.approx(float(stripes.mean()), abs=1e-3)


def test_pixel_masks_cover_their_boxes(masks):
    assert set(masks) == set(OCCLUDED_REGIONS)
    regions = face_regions({}, SIZE)
    for name, mask in masks.items():
        assert mask.shape == (SIZE, SIZE) and 0 <= mask.min() and mask.max() <= 1
        x0, y0, x1, y1 = regions[name]
        centre = (int((y0 + y1) / 2), int((x0 + x1) / 2))
        if name != "cheeks":  # the cheeks' box centre is the nose, cut out of them
            assert mask[centre] == 1.0
    assert not ((masks["cheeks"] == 1) & (masks["nose"] == 1)).any()  # only edge pixels are shared
    plain = pixel_masks(dict(regions), 24, crop_size=SIZE)  # boxes of a 48-px crop, a 24-px input
    assert plain["mouth"].shape == (24, 24)


def test_only_the_region_the_classifier_reads_matters(masks):
    """A classifier that reads the mouth's texture: blurring the mouth alone changes its answer."""
    mouth = torch.from_numpy(masks["mouth"]) > 0.5
    calls = []

    def classify(images):
        calls.append(images.shape[0])
        detail = (images[:, 0] - gaussian_blur(images, 2.0)[:, 0]).abs()[:, mouth].mean(1)  # high frequencies
        logits = torch.stack([20 * detail, torch.full_like(detail, 1.0)], 1)
        return logits.softmax(1)

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, SIZE, SIZE, generator=generator)
    result = occlusion_effects(classify, image, masks)
    assert calls == [1 + len(masks)]  # the original and every occluded copy in one batch
    assert result.target == 0 and result.probability > 0.9
    by_region = {r.region: r for r in result.regions}
    assert result.regions[0].region == "mouth" and by_region["mouth"].change < -0.3
    assert by_region["mouth"].label == 1  # without its mouth the face is read as the other class
    for name in ("forehead", "brows", "eyes"):  # far from the mouth: nothing changes
        assert abs(by_region[name].change) < 0.02
    again = occlusion_effects(classify, image[None], masks, target=1)
    assert again.target == 1 and {r.region for r in again.regions} == set(masks)
    assert again.to_dict(["a", "b"])["target"] == "b"


def test_dataset_faces_are_framed_as_the_protocol_frames_detected_ones():
    protocol = InputProtocol(margin=0.25, shift_y=0.0)
    x0, y0, x1, y1 = framed_face_box(48, protocol)
    assert (x0, x1) == pytest.approx((8.0, 40.0)) and (y0, y1) == pytest.approx((8.0, 40.0))
    lower = framed_face_box(48, InputProtocol(margin=0.25, shift_y=-0.1))  # crops sat above the box
    assert lower[1] == pytest.approx(8.0 + 3.2) and lower[3] - lower[1] == pytest.approx(32.0)
    grid = framed_region_masks(48, (12, 12), protocol)
    rows = lambda m: np.flatnonzero(m.any(1))  # noqa: E731
    assert rows(grid["brows"]).mean() < rows(grid["eyes"]).mean() < rows(grid["mouth"]).mean()
