"""Several animals from one frame's maps (engine/multi.py): regions, splitting touching animals, per-animal peaks."""

from __future__ import annotations

import numpy as np

from ppmtrack.engine.multi import find_animals, foreground_regions, split_region

RES = 32


def blob(cx, cy, sx, sy):
    yy, xx = np.mgrid[0:RES, 0:RES]
    return np.exp(-((xx - cx) ** 2 / (2 * sx**2) + (yy - cy) ** 2 / (2 * sy**2)))


def two_animal_maps(a, b):
    """Foreground: two elongated blobs; keypoint 0 at each blob's left end, keypoint 1 at its right end."""
    fg = np.maximum(blob(*a, 4.0, 2.0), blob(*b, 4.0, 2.0))
    maps = np.stack([
        np.maximum(blob(a[0] - 3, a[1], 1, 1), blob(b[0] - 3, b[1], 1, 1)),
        np.maximum(blob(a[0] + 3, a[1], 1, 1), blob(b[0] + 3, b[1], 1, 1)),
    ])
    return maps * fg, fg


def test_separate_animals_are_found_with_their_own_keypoints():
    maps, fg = two_animal_maps((8, 8), (22, 24))
    found = find_animals(maps, fg, 2)
    assert len(found) == 2
    got = sorted(found.keypoints.tolist(), key=lambda kp: kp[0][0])
    np.testing.assert_allclose(got[0], [[5, 8], [11, 8]], atol=0.6)
    np.testing.assert_allclose(got[1], [[19, 24], [25, 24]], atol=0.6)
    assert (found.confidence > 0.5).all()


def test_touching_animals_are_split_when_the_count_is_known_and_not_in_auto_mode():
    maps, fg = two_animal_maps((11, 14), (19, 17))  # touching: one connected foreground region
    assert len(foreground_regions(fg, 0.3)) == 1
    found = find_animals(maps, fg, 2, threshold=0.3)
    assert len(found) == 2
    assert not (found.masks[0] & found.masks[1]).any()
    centres = sorted(found.keypoints.mean(axis=1).tolist())
    np.testing.assert_allclose(centres, [[11, 14], [19, 17]], atol=1.0)
    assert len(find_animals(maps, fg, 2, exact=False, threshold=0.3)) == 1


def test_at_most_max_animals_heaviest_first_and_small_specks_dropped():
    maps, fg = two_animal_maps((8, 8), (22, 24))
    fg = fg.copy()
    fg[30, 30] = 1.0  # a one-cell speck
    found = find_animals(maps, fg, 1)
    assert len(found) == 1
    assert len(find_animals(maps, fg, 3, exact=False)) == 2
    assert len(find_animals(maps, np.zeros_like(fg), 2)) == 0


def test_a_compact_blob_is_not_split():
    assert split_region(blob(16, 16, 3, 3) > 0.5) is None


def test_region_boxes_are_squares_around_each_region_in_frame_pixels():
    import torch

    from ppmtrack.engine.geometry import crop, letterbox_mapping
    from ppmtrack.engine.multi import region_boxes

    mapping = letterbox_mapping(640, 480, 256)  # 2.5 frame px per input px, 32 px grey bars top and bottom
    masks = np.zeros((2, RES, RES), bool)
    masks[0, 10:14, 4:12] = True  # 8 × 4 cells: wide
    masks[1, 20:21, 30:31] = True  # one cell at the right edge: the minimum side, reaching past the frame
    boxes = region_boxes(masks, 256 / RES, mapping, margin=0.25, min_side=32.0)
    sides = boxes[:, 2:] - boxes[:, :2]
    np.testing.assert_allclose(sides[:, 0], sides[:, 1])
    # region 0: cells 4..11 → input px 32..96 → frame px 80..240 wide (160 px), so the side is 1.5 × 160
    np.testing.assert_allclose(boxes[0], [160 - 120, (10 * 8 - 32 + 14 * 8 - 32) / 2 * 2.5 - 120,
                                          160 + 120, (10 * 8 - 32 + 14 * 8 - 32) / 2 * 2.5 + 120])
    np.testing.assert_allclose(sides[1], [32.0, 32.0])  # 20 px region: the minimum side
    frames = torch.zeros((2, 480, 640, 3), dtype=torch.uint8)
    x, box = crop(frames, boxes, 64)  # the crops of both regions go through the engine as one batch
    assert x.shape == (2, 3, 64, 64)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 - 0.5  # pixel-centre coordinates of each box's centre
    np.testing.assert_allclose(box.to_input(centre[:, None])[:, 0], [[31.5, 31.5], [31.5, 31.5]], atol=1e-6)
