"""Feature correspondence (engine.correspond): the sub-cell read-out and matching on a known affine warp."""

import cv2
import numpy as np
import pytest
import torch

from ppmtrack.engine.correspond import (
    CorrespondConfig,
    correlation,
    correlation_flops,
    descriptor_grid,
    kernel_soft_argmax,
    sample_descriptors,
)


@pytest.mark.parametrize("x0, y0", [(10.3, 7.8), (20.55, 15.1), (5.5, 25.45), (12.25, 12.75), (16.0, 16.0)])
@pytest.mark.parametrize("width", [1.0, 1.5, 2.0])
def test_kernel_soft_argmax_recovers_a_synthetic_peak_within_a_tenth_of_a_cell(x0, y0, width):
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    corr = 0.9 * torch.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * width**2)) - 0.1
    xy, conf = kernel_soft_argmax(corr[None])
    assert np.hypot(float(xy[0, 0]) - x0, float(xy[0, 1]) - y0) < 0.1
    assert float(conf[0]) > 0.9


def test_a_second_peak_does_not_pull_the_read_out_and_lowers_the_confidence():
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")

    def bump(x, y):
        return torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 2)

    one = bump(8.2, 9.0)
    two = torch.maximum(one, 0.97 * bump(24.0, 20.0))
    xy, conf = kernel_soft_argmax(torch.stack([one, two]))
    assert np.allclose(xy[1].numpy(), [8.2, 9.0], atol=0.1)  # not dragged half-way to the other peak
    assert float(conf[1]) < float(conf[0]) - 0.1


def test_descriptors_are_unit_and_a_cell_matches_itself():
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 8, 8, 5, generator=gen), torch.randn(2, 16, 16, 7, generator=gen)]
    grid = descriptor_grid(feats)
    assert grid.shape == (2, 16, 16, 12)
    assert torch.allclose(grid.norm(dim=-1), torch.ones(2, 16, 16), atol=1e-5)
    pts = torch.tensor([[3.0, 4.0], [10.0, 2.0], [14.0, 14.0]])
    desc = sample_descriptors(grid[1], pts)
    assert torch.allclose(desc, grid[1, pts[:, 1].long(), pts[:, 0].long()], atol=1e-5)
    corr = correlation(desc, grid)
    assert corr.shape == (2, 3, 16, 16)
    xy, _ = kernel_soft_argmax(corr[1], beta=CorrespondConfig().beta)
    assert np.abs(xy.numpy() - pts.numpy()).max() < 0.5


def test_correlation_flops_for_twenty_points_on_sd15():
    # SD 1.5 up path at 512²: 64² cells, 3 × (1280 + 640 + 320) channels (bench/flops.py)
    flops = correlation_flops(20, 64 * 64, 6720)
    assert 0.5e9 < flops < 2e9


@pytest.fixture(scope="module")
def warped_pair(tiny_model, sample_support):
    """A support frame of the sample, the same frame under a known affine, and its points in both."""
    image = sample_support.images[1]
    points = sample_support.instances()[1].reshape(-1, 2)
    h, w = image.shape[:2]
    affine = cv2.getRotationMatrix2D((w / 2, h / 2), 12, 1.1)
    affine[:, 2] += [8, -5]
    warped = cv2.warpAffine(image, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    return image, points, warped, points @ affine[:, :2].T + affine[:, 2]


def test_points_on_the_animal_are_found_in_an_affine_warp_and_beat_random_locations(tiny_model, warped_pair):
    from ppmtrack.engine.correspond_points import PointMatcher

    image, points, warped, truth = warped_pair
    matcher = PointMatcher(tiny_model, config=CorrespondConfig(views=4))
    desc = matcher.describe(image, points)
    grids, box = matcher.frame_grids(warped[None])
    xy, conf = matcher.locate(grids, box, desc)
    cell = matcher.stride(grids) / box.scale[0]  # frame pixels per map cell
    err = np.linalg.norm(xy[0] - truth, axis=1) / cell
    rng = np.random.default_rng(0)
    h, w = warped.shape[:2]
    random_err = np.linalg.norm(rng.uniform([0, 0], [w, h], size=(2000, len(truth), 2)) - truth, axis=2) / cell
    # the untrained tiny model finds 6 of the 10 keypoints within one cell (median 0.85 cells); random
    # locations land there 0.4 % of the time (median 12 cells)
    assert (err <= 1.0).mean() >= 0.5
    assert (err <= 1.0).mean() > (random_err <= 1.0).mean() + 0.4
    assert np.median(err) < np.median(random_err) / 5
    assert ((conf >= 0) & (conf <= 1)).all()
    # a control that would expose a broken matcher: descriptors of the wrong points do not land on these
    wrong, _ = matcher.locate(grids, box, desc.roll(3, dims=0))
    assert np.median(np.linalg.norm(wrong[0] - truth, axis=1) / cell) > 2 * np.median(err)
