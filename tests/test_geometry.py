"""engine.geometry: one letterbox/crop for adaptation, inference and ONNX; coordinates that map back exactly."""

import numpy as np
import pytest
import torch

from ppmtrack.engine.geometry import (
    crop,
    engine_input,
    grid_to_input,
    input_to_grid,
    letterbox,
    letterbox_mapping,
)


def blob_frame(width, height, centre, sigma=6.0):
    """A uint8 frame with one bright Gaussian blob at sub-pixel `centre` (pixel centres at integers)."""
    yy, xx = np.mgrid[:height, :width]
    g = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def centroid(x: torch.Tensor) -> np.ndarray:
    """Centroid (x, y) of what is brighter than mid-grey (the blob's symmetric top; bars and background are not)."""
    m = x[0].clamp(min=0).numpy().astype(np.float64)
    yy, xx = np.mgrid[:m.shape[0], :m.shape[1]]
    return np.array([(m * xx).sum(), (m * yy).sum()]) / m.sum()


def test_letterbox_keeps_the_aspect_and_separate_scales():
    frames = torch.zeros(2, 240, 320, 3, dtype=torch.uint8)
    x, mapping = letterbox(frames, 128)
    assert x.shape == (2, 3, 128, 128)
    assert np.allclose(mapping.scale, [0.4, 0.4])
    assert float(x[0, 0, 0, 0]) == 0.0  # grey bar: exactly 0 in [-1, 1]
    odd = letterbox_mapping(333, 101, 128)  # rounding makes x and y scales differ; each is exact
    assert odd.scale_x == 128 / 333 and odd.scale_y == round(101 * 128 / 333) / 101


@pytest.mark.parametrize("how", ["letterbox", "crop", "crop-outside"])
def test_frame_to_grid_to_frame_round_trip_and_pixels_agree(how):
    centre = (141.3, 97.6)
    frame = torch.from_numpy(blob_frame(320, 240, centre))[None]
    if how == "letterbox":
        x, mapping = letterbox(frame, 128)
    elif how == "crop":
        x, mapping = crop(frame, (100.4, 60.2, 196, 140), 64)  # non-square: x and y scaled differently
    else:
        x, mapping = crop(frame, (-20, 40, 180, 240), 64)  # leaves the frame on the left
    points = np.array([[0.0, 0.0], [319.0, 239.0], list(centre)])
    if mapping.scale.ndim == 2:
        points = points[None]
    stride = 8.0
    back = mapping.to_frame(grid_to_input(input_to_grid(mapping.to_input(points), stride), stride))
    assert np.abs(back - points).max() < 0.01
    # and the mapping is where the pixels went: the blob's centroid in the input maps back onto the blob
    found = mapping.to_frame(centroid(x[0])[None] if mapping.scale.ndim == 1 else centroid(x[0])[None, None])
    assert np.abs(found.reshape(2) - np.array(centre)).max() < 0.1, found


def test_crop_pads_outside_the_frame_with_grey_and_takes_one_box_per_frame():
    frames = torch.full((2, 50, 60, 3), 255, dtype=torch.uint8)
    x, mapping = crop(frames, [(-30, 0, 30, 60), (0, 0, 60, 50)], 32)
    assert float(x[0, :, 16, 2].abs().max()) < 1e-6  # left part of box 0 is outside: grey
    assert float(x[1].min()) > 0.99  # box 1 is the whole white frame
    assert mapping.scale.shape == (2, 2)
    with pytest.raises(ValueError, match="3 crop boxes for 2 frames"):
        crop(frames, np.zeros((3, 4)) + [0, 0, 10, 10], 32)


def test_support_time_and_track_time_preprocessing_are_identical(tiny_model, sample_support):
    """Adaptation's support frames and `Engine.predict`'s frames go through the same preprocessing."""
    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.engine.adapt import support_inputs

    engine = Engine(tiny_model, sample_support.names, torch.zeros(len(sample_support.names), 768),
                    torch.zeros(768), AdaptConfig(resolution=128))
    support_side = support_inputs(sample_support, 128, tiny_model.device)
    for (xs, ms), image, kp in zip(support_side, sample_support.images, sample_support.keypoints, strict=True):
        xt, mt = engine.prepare(np.stack([image, image]))  # a tracking batch holding the same frame
        assert torch.equal(xs[0], xt[0]) and torch.equal(xs[0], xt[1])
        assert np.array_equal(ms.to_input(kp), mt.to_input(kp))
    xo, _ = engine_input(sample_support.images[0], 128, torch.device("cpu"))  # what the ONNX runtime feeds
    assert torch.equal(xo, support_side[0][0].cpu())
