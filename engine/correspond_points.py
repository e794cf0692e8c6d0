"""Arbitrary points by correspondence alone: no keypoint prompts, no adaptation (``ppmtrack points``).

:class:`PointMatcher` runs the frozen model's forward (VAE, noise at the engine's timestep, UNet to the last
captured up-path layer) with a fixed prompt and reads the decoder features as a descriptor grid
(:func:`engine.correspond.descriptor_grid`). Points given on query frames become descriptors (averaged over
random affine views of their frame, :mod:`engine.augment`); :class:`PointTracker` finds them in every frame
(:func:`engine.correspond.match`) and answers ``predict`` like an :class:`engine.api.Engine`, so the tracking
run (flow, filter, anchors, outputs) is the one of ``ppmtrack track``.

The prompt is all zeros unless an SD4Match-tuned one is given: a neutral conditioning for a model without its
text encoder.
"""

from __future__ import annotations

import numpy as np
import torch

from ppmtrack.engine.adapt import to_image, to_tensor
from ppmtrack.engine.api import Prediction
from ppmtrack.engine.attention import TOKENS, select_layers
from ppmtrack.engine.augment import AugmentConfig, random_affine, warp_view
from ppmtrack.engine.correspond import (
    CorrespondConfig,
    average_descriptors,
    descriptor_grid,
    match,
    sample_descriptors,
)
from ppmtrack.engine.geometry import InputMapping, engine_input, grid_to_input, input_to_grid
from ppmtrack.engine.infer import MapExtractor
from ppmtrack.engine.models import DiffusionModel


class PointMatcher:
    """Descriptor grids of frames from one forward of a frozen diffusion model.

    Parameters
    ----------
    model : DiffusionModel
    layers : str or list of str
        Cross-attention layers whose query-side features are read (default the up path, as PPM's maps).
    timestep : int
        Noise timestep of the input latent (PPM's 10).
    resolution : int, optional
        Side of the square input; default the model's native resolution.
    prompt : torch.Tensor, optional
        (c,) or (T, c) conditioning; default zeros.
    config : CorrespondConfig, optional
    """

    def __init__(self, model: DiffusionModel, layers="up", timestep: int = 10, resolution: int | None = None,
                 prompt: torch.Tensor | None = None, config: CorrespondConfig | None = None, seed: int = 0):
        self.model = model
        self.layers = select_layers(model.unet, layers)
        self.resolution = int(resolution or model.native_resolution)
        if self.resolution % 64:
            raise ValueError(f"resolution must be a multiple of 64, got {self.resolution}")
        self.extractor = MapExtractor(model, self.layers, timestep)
        self.config = config or CorrespondConfig()
        self.seed = seed
        dim = model.cross_attention_dim
        p = torch.zeros(dim) if prompt is None else prompt.detach().float()
        p = p.reshape(-1, dim)
        self.conditioning = (p.expand(TOKENS, -1) if len(p) == 1 else p)[None].to(model.device)

    @torch.no_grad()
    def grids(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) engine inputs in [-1, 1] → (B, R, R, C) unit descriptor grids."""
        out = self.extractor.layer_maps(self.extractor.encode(x), self.conditioning, n_tokens=0, features=True)
        return descriptor_grid(out["features"])

    def frame_grids(self, frames) -> tuple[torch.Tensor, InputMapping]:
        """Descriptor grids of a batch of same-size RGB uint8 frames (letterboxed) and their mapping."""
        x, box = engine_input(frames, self.resolution, self.model.device)
        return self.grids(x), box

    def stride(self, grid: torch.Tensor) -> float:
        """Engine-input pixels per map cell."""
        return self.resolution / int(grid.shape[1])

    @torch.no_grad()
    def describe(self, frame: np.ndarray, points: np.ndarray, views: int | None = None) -> torch.Tensor:
        """(N, C) unit descriptors of (N, 2) frame-pixel points of one RGB uint8 frame.

        Averaged over ``views`` views (default the config's): the letterboxed frame, then random affine views of
        it (``engine.augment``'s ranges, fixed seed); a point pushed out of a view is left out of that view.
        """
        n_views = self.config.views if views is None else int(views)
        x, box = engine_input(frame, self.resolution, self.model.device)
        kp = box.to_input(np.asarray(points, dtype=np.float64).reshape(-1, 2))
        image = to_image(x[0])
        rng = np.random.default_rng(self.seed)
        inputs, view_points, valid = [x], [kp], [np.ones(len(kp), bool)]
        for _ in range(n_views - 1):
            mat, flip = random_affine(rng, self.resolution, AugmentConfig(), allow_flip=False)
            view, vkp, _, outside = warp_view(image, kp[None], None, mat, flip, np.arange(len(kp)))
            inputs.append(to_tensor(view[None]).to(x.device))
            view_points.append(np.nan_to_num(vkp[0]))
            valid.append(~outside[0])
        grids = self.grids(torch.cat(inputs))
        stride = self.stride(grids)
        per_view = [sample_descriptors(g, torch.from_numpy(input_to_grid(p, stride)))
                    for g, p in zip(grids, view_points, strict=True)]
        return average_descriptors(per_view, valid)

    def locate(self, grids: torch.Tensor, box: InputMapping, descriptors: torch.Tensor
               ) -> tuple[np.ndarray, np.ndarray]:
        """(B, N, 2) frame-pixel positions and (B, N) confidences of the descriptors in the grids."""
        xy, conf = match(descriptors, grids, self.config)
        xy_in = grid_to_input(xy.cpu().numpy().astype(np.float64), self.stride(grids))
        return box.to_frame(xy_in), conf.cpu().numpy().astype(np.float64)


class PointTracker:
    """An engine-like (``engine.interface.EngineLike``) that finds fixed query points by correspondence.

    Parameters
    ----------
    matcher : PointMatcher
    names : list of str
        One per query point.
    descriptors : torch.Tensor
        (N, C) from :meth:`PointMatcher.describe`.
    info : dict, optional
        Recorded like an engine's info; ``support_frames`` records (:mod:`pipelines.anchors`) make the query
        frames anchors of the run.
    """

    flip_pairs: list = []
    detector = "features"  # recorded in the run summary's settings

    def __init__(self, matcher: PointMatcher, names: list[str], descriptors: torch.Tensor, info: dict | None = None):
        if len(names) != len(descriptors):
            raise ValueError(f"{len(names)} names for {len(descriptors)} descriptors")
        self.matcher = matcher
        self.names = list(names)
        self.skeleton: list[tuple] = []
        self.flip_pairs = []
        self.descriptors = descriptors
        self.info = dict(info or {})
        self.model = matcher.model
        self.resolution = matcher.resolution
        self.layers = matcher.layers
        self.path = None

    @torch.no_grad()
    def predict(self, frames, return_maps: bool = False) -> Prediction:
        grids, box = self.matcher.frame_grids(frames)
        xy, conf = self.matcher.locate(grids, box, self.descriptors)
        return Prediction(keypoints=xy, confidence=conf, sharpness=conf.copy())

    def reset_stream(self) -> None:
        """Nothing is carried from frame to frame."""
