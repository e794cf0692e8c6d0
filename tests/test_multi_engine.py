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
