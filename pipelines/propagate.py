"""Label propagation: suggest every keypoint on unlabelled frames from the frames already labelled.

Used by the label page's "propose" (``ppmtrack label --model``) and measured by ``bench/correspondence.py``.

- Correspondence: each keypoint's descriptor is the mean of its descriptors on the labelled frames (each
  averaged over affine views of its frame, :meth:`engine.correspond_points.PointMatcher.describe`); it is found
  in the frame to fill by :func:`engine.correspond.match`.
- Flow, for a frame within ``near`` frames of a labelled one: the labels are carried there by Lucas-Kanade
  (:func:`tracker.flow.propagate_points`, frame by frame). Where the flow holds (forward-backward error at most
  ``max_fb_px`` on every step) the flow's position is suggested, else the correspondence's.

A suggestion is only a suggestion: the label page draws it apart from the labels, and it becomes a label when
the user accepts it (or drags it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

NEAR_FRAMES = 5
MAX_FB_PX = 2.0


@dataclass
class Suggestion:
    """Suggested keypoints of one frame: xy (K, 2) frame pixels, confidence (K,) in [0, 1], source (K,) of
    "flow" or "features"."""

    xy: np.ndarray
    confidence: np.ndarray
    source: list[str]

    def to_dict(self, names: list[str]) -> dict:
        return {n: {"x": round(float(p[0]), 2), "y": round(float(p[1]), 2), "confidence": round(float(c), 3),
                    "source": s}
                for n, p, c, s in zip(names, self.xy, self.confidence, self.source, strict=True)
                if np.isfinite(p).all()}


def keypoint_descriptors(matcher, labelled: dict[int, np.ndarray], get_frame: Callable[[int], np.ndarray]
                         ) -> torch.Tensor:
    """(K, C) unit descriptors: each keypoint's mean over the labelled frames where it is labelled (zero if none).

    ``labelled``: frame index → (K, 2) labels (NaN rows: not labelled there)."""
    total = None
    for index, points in sorted(labelled.items()):
        points = np.asarray(points, dtype=np.float64)
        ok = np.isfinite(points).all(axis=1)
        if not ok.any():
            continue
        desc = matcher.describe(get_frame(index), np.where(ok[:, None], points, 0.0))
        desc = desc * torch.from_numpy(ok.astype(np.float32))[:, None].to(desc.device)
        total = desc if total is None else total + desc
    if total is None:
        raise ValueError("no labelled keypoint to propagate from")
    return torch.nn.functional.normalize(total, dim=1)


def flow_from_nearest(labelled: dict[int, np.ndarray], target: int, get_frame: Callable[[int], np.ndarray],
                      near: int = NEAR_FRAMES, max_fb_px: float = MAX_FB_PX) -> np.ndarray | None:
    """(K, 2) labels of the nearest labelled frame within ``near`` frames carried to ``target`` by LK flow (NaN
    where the flow failed or its forward-backward error exceeded ``max_fb_px`` on a step), or None."""
    from ppmtrack.tracker.flow import FlowParams, flow_image, propagate_points

    if not labelled:
        return None
    source = min(labelled, key=lambda i: (abs(i - target), i))
    if abs(source - target) > near or source == target:
        return None
    params = FlowParams()
    step = 1 if target > source else -1
    points = np.asarray(labelled[source], dtype=np.float64).copy()
    frame = get_frame(source)
    shape = frame.shape[:2]
    previous = flow_image(frame, params)
    for t in range(source + step, target + step, step):
        current = flow_image(get_frame(t), params)
        moved, fb = propagate_points(previous, current, points, params, shape)
        moved[~(fb <= max_fb_px)] = np.nan
        points, previous = moved, current
    return points


def propose(matcher, labelled: dict[int, np.ndarray], targets: list[int], get_frame: Callable[[int], np.ndarray],
            near: int = NEAR_FRAMES, batch_size: int = 4, descriptors: torch.Tensor | None = None
            ) -> dict[int, Suggestion]:
    """Suggestions for the ``targets`` frames (module docstring); ``near=0`` uses correspondence only.

    ``get_frame(index)`` returns a frame (RGB uint8) of the video; frames are only read where needed.
    Suggested positions lie inside the frame.
    """
    if descriptors is None:
        descriptors = keypoint_descriptors(matcher, labelled, get_frame)
    unknown = (descriptors.norm(dim=1) < 0.5).cpu().numpy()  # never labelled: nothing to look for
    todo = [t for t in targets if t not in labelled]
    out: dict[int, Suggestion] = {}
    for first in range(0, len(todo), batch_size):
        chunk = todo[first:first + batch_size]
        images = [get_frame(t) for t in chunk]
        grids, box = matcher.frame_grids(np.stack(images))
        xy, conf = matcher.locate(grids, box, descriptors)
        for i, t in enumerate(chunk):
            h, w = images[i].shape[:2]
            p, c, src = xy[i].copy(), conf[i].copy(), ["features"] * len(xy[i])
            flow = flow_from_nearest(labelled, t, get_frame, near) if near > 0 else None
            if flow is not None:
                ok = np.isfinite(flow).all(axis=1)
                p[ok], c[ok] = flow[ok], 1.0
                src = ["flow" if o else s for o, s in zip(ok, src, strict=True)]
            p[unknown] = np.nan
            p[:, 0] = np.clip(p[:, 0], 0, w - 1)
            p[:, 1] = np.clip(p[:, 1], 0, h - 1)
            out[t] = Suggestion(p, c, src)
    return out


MAX_SUGGEST_FRAMES = 50


class LabelProposer:
    """The label page's "suggest": a diffusion model loaded on first use, suggestions from the session's labels.

    ``model``: a model id, folder or ``tiny`` (``ppmtrack label --model``), or a loaded DiffusionModel.
    """

    def __init__(self, model, device: str | None = None, views: int = 4, near: int = NEAR_FRAMES):
        self.model_spec = model
        self.device = device
        self.views = views
        self.near = near
        self._matcher = None

    def matcher(self):
        if self._matcher is None:
            from ppmtrack.engine.correspond import CorrespondConfig
            from ppmtrack.engine.correspond_points import PointMatcher
            from ppmtrack.engine.models import DiffusionModel, load_model

            model = self.model_spec
            if not isinstance(model, DiffusionModel):
                model = load_model(model, device=self.device)
            self._matcher = PointMatcher(model, config=CorrespondConfig(views=self.views))
        return self._matcher

    def suggest(self, session, video: int, frames) -> dict:
        """Suggestions for ``frames`` of video ``video`` of a :class:`pipelines.web.sessions.LabelSession`, as
        ``{"frames": {frame: {name: {x, y, confidence, source}}}}``; labelled frames get none. Nothing is saved:
        the page turns suggestions into labels when the user accepts them."""
        from ppmtrack.pipelines.web.sessions import WebInputError

        if not isinstance(video, int) or not 0 <= video < len(session.videos):
            raise WebInputError(f"no video {video!r}")
        clip = session.videos[video]
        if (not isinstance(frames, list) or not frames or len(frames) > MAX_SUGGEST_FRAMES
                or not all(isinstance(f, int) and not isinstance(f, bool) and 0 <= f < clip.n_frames for f in frames)):
            raise WebInputError(f"frames must be a list of 1 to {MAX_SUGGEST_FRAMES} frame numbers of "
                                f"{clip.path.name} (0–{clip.n_frames - 1})")
        labelled_all = {key: kp for key, kp in session.frames.items() if np.isfinite(kp).all(axis=1).any()}
        if not labelled_all:
            raise WebInputError("label at least one frame first: suggestions come from the labelled frames")
        matcher = self.matcher()
        desc = keypoint_descriptors(matcher, labelled_all, lambda key: session.videos[key[0]].rgb(key[1]))
        here = {frame: kp for (vid, frame), kp in labelled_all.items() if vid == video}
        found = propose(matcher, here, sorted(set(frames)), clip.rgb, near=self.near, descriptors=desc)
        return {"frames": {str(f): s.to_dict(session.names) for f, s in found.items()}}
