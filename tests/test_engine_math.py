"""FGAR, FARA, localisation and augmentation maths against small hand-computed cases."""

import cv2
import numpy as np
import torch

from ppmtrack.engine.augment import AugmentConfig, flip_permutation, random_affine, warp_view
from ppmtrack.engine.fara import cosine_affinity, distance_weights, fara_mask, superpixel_means
from ppmtrack.engine.fgar import focus_score, fuse_layers_fgar, soft_iou
from ppmtrack.engine.geometry import grid_to_input, input_to_grid
from ppmtrack.engine.localize import soft_argmax_peak


def test_soft_iou_matches_hand_computation():
    m = torch.tensor([[0.2, 0.8], [0.5, 0.0]])
    f = torch.tensor([[0.4, 0.4], [0.5, 1.0]])
    # min: 0.2 + 0.4 + 0.5 + 0 = 1.1; max: 0.4 + 0.8 + 0.5 + 1.0 = 2.7
    assert torch.isclose(soft_iou(m, f), torch.tensor(1.1 / 2.7), atol=1e-6)


def test_focus_score_is_sigmoid_of_energy_over_active_area():
    m = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # mean 0.25, one cell above it: sigmoid(1 / 1)
    assert torch.isclose(focus_score(m), torch.sigmoid(torch.tensor(1.0)))
    spread = torch.full((2, 2), 0.5)  # nothing above the mean: area clamps to 1 -> sigmoid(2.0)
    assert torch.isclose(focus_score(spread), torch.sigmoid(torch.tensor(2.0)))
    peaked = torch.zeros(4, 4)
    peaked[1, 1] = 1.0
    blurry = torch.full((4, 4), 1.0 / 16) + 1e-3 * torch.tensor([1.0, -1.0]).repeat(8).reshape(4, 4)
    assert focus_score(peaked) > focus_score(blurry)


def test_fuse_layers_weights_and_refinement():
    fg = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    good = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # overlaps the foreground exactly
    bad = torch.tensor([[0.0, 0.0], [0.0, 1.0]])  # outside the foreground: IoU 0, weight 0
    layers = torch.stack([good, bad])[None]  # (1, L=2, 2, 2)
    fused = fuse_layers_fgar(layers, fg[None, None], reweight=True, refine=False)[0]
    assert torch.allclose(fused, good, atol=1e-6)
    plain = fuse_layers_fgar(layers, fg[None, None], reweight=False, refine=False)[0]
    assert torch.allclose(plain, (good + bad) / 2)
    refined = fuse_layers_fgar(layers, fg[None, None], reweight=False, refine=True)[0]
    assert torch.allclose(refined, (good + bad) / 2 * fg)
    # weights by hand: w_l = IoU_l * f_l with two partial layers
    a = torch.tensor([[0.6, 0.2], [0.0, 0.0]])
    b = torch.tensor([[0.3, 0.0], [0.0, 0.5]])
    fg2 = torch.tensor([[0.9, 0.1], [0.0, 0.2]])
    wa = (0.6 + 0.1) / (0.9 + 0.2 + 0.2) * torch.sigmoid(torch.tensor(0.8 / 1))
    wb = (0.3 + 0.2) / (0.9 + 0.1 + 0.5) * torch.sigmoid(torch.tensor(0.8 / 2))
    expect = (wa * a + wb * b) / (wa + wb)
    got = fuse_layers_fgar(torch.stack([a, b])[None], fg2[None, None], reweight=True, refine=False)[0]
    assert torch.allclose(got, expect, atol=1e-6)


def test_fara_affinity_and_distance_weights():
    means = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    aff = cosine_affinity(means)
    assert np.allclose(np.diag(aff), 1.0)
    assert np.isclose(aff[0, 1], 0.0)
    assert np.isclose(aff[0, 2], 1 / np.sqrt(2))
    w = distance_weights(np.array([[0.0, 0.0], [0.3, 0.4]]), np.array([[0.0, 0.0]]), delta=0.1)
    assert np.isclose(w[0, 0], 1.0)
    assert np.isclose(w[1, 0], np.exp(-0.25 / (2 * 0.01)))


def test_superpixel_means_and_centroids():
    labels = np.array([[0, 0, 1], [0, 0, 1]])
    feats = np.arange(12, dtype=float).reshape(2, 3, 2)
    means, cents = superpixel_means(labels, feats)
    assert np.allclose(means[0], feats[:, :2].reshape(-1, 2).mean(0))
    assert np.allclose(means[1], feats[:, 2].mean(0))
    assert np.allclose(cents[0], [0.5, 0.5]) and np.allclose(cents[1], [2.0, 0.5])


def test_fara_mask_covers_the_object_not_the_background():
    rng = np.random.default_rng(0)
    img = (rng.random((96, 96, 3)) * 60).astype(np.uint8)
    cv2.circle(img, (40, 50), 18, (220, 60, 40), -1)
    feats = cv2.resize(img.astype(np.float32) / 255, (24, 24), interpolation=cv2.INTER_AREA)
    feats = np.concatenate([feats, 1 - feats], axis=-1)  # colour features with an offset, like real ones
    mask = fara_mask(img, feats, np.array([[40.0, 50.0], [np.nan, np.nan]]), delta=0.3)
    assert mask.shape == (96, 96) and np.isclose(mask.max(), 1.0)
    assert mask[50, 40] > 0.8
    assert mask[8, 88] < 0.5 * mask[50, 40]


def test_soft_argmax_recovers_subcell_peak():
    g = torch.arange(16.0)
    x0, y0 = 6.3, 9.7
    m = torch.exp(-((g[None] - x0) ** 2 + (g[:, None] - y0) ** 2) / (2 * 1.0**2))
    xy, peak = soft_argmax_peak(m[None, None], window=5)
    assert torch.allclose(xy[0, 0], torch.tensor([x0, y0]), atol=0.1)
    assert 0.8 < float(peak) <= 1.0
    # a peak on the border is not pulled outward by the padding
    m2 = torch.exp(-((g[None] - 0.0) ** 2 + (g[:, None] - 5.0) ** 2) / 2)
    xy2, _ = soft_argmax_peak(m2[None], window=5)
    assert abs(float(xy2[0, 0])) < 0.2


def test_grid_coordinates_round_trip():
    xy = np.array([[10.0, 20.0], [255.0, 0.0]])
    assert np.allclose(grid_to_input(input_to_grid(xy, 8.0), 8.0), xy)
    # a cell centre maps to the centre of its 8x8 pixel block
    assert np.isclose(grid_to_input(np.array(0.0), 8.0), 3.5)


def test_augmentation_moves_keypoints_with_pixels_and_swaps_flip_pairs():
    rng = np.random.default_rng(3)
    img = np.zeros((64, 64, 3), np.uint8)
    img[19:22, 11:14] = (255, 0, 0)
    img[39:42, 49:52] = (0, 255, 0)
    kp = np.array([[12.0, 20.0], [50.0, 40.0]])
    perm = flip_permutation(["left", "right"], [("left", "right")])
    assert list(perm) == [1, 0]
    cfg = AugmentConfig(rotate_deg=30, scale=0.1, translate=0.05, flip=True)
    for _ in range(10):
        m, flip = random_affine(rng, 64, cfg, allow_flip=True)
        view, vkp, _, out = warp_view(img.astype(np.float32), kp.copy(), None, m, flip, perm)
        order = perm if flip else np.arange(2)
        for j, channel in zip(order, (0, 1), strict=True):
            if out[j]:
                continue
            x, y = np.round(vkp[j]).astype(int)
            assert view[y, x, channel] > 0.5 * 255  # the blob moved to where its keypoint went
