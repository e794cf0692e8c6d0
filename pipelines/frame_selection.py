"""Propose frames to label that span a video's variety: k-means on downsampled frames (DeepLabCut's kmeans)."""

from __future__ import annotations

import cv2
import numpy as np


def propose_frames(frames, n: int = 20, *, samples: int = 300, size: int = 32, seed: int = 0) -> list[int]:
    """Pick ``n`` frames that differ from each other, by k-means clustering of small grey thumbnails.

    As DeepLabCut's ``extract_frames(mode="automatic", algo="kmeans")``: frames are sampled evenly over the
    video, shrunk to ``size`` pixels wide, turned grey and clustered; the frame nearest each cluster centre
    is proposed.

    Parameters
    ----------
    frames : pipelines.video_frames.VideoFrames
        The video (anything with ``n_frames`` and ``rgb(index)``).
    n : int
        How many frames to propose (fewer if the video is shorter).
    samples : int
        How many evenly spaced frames to cluster.
    size : int
        Thumbnail width in pixels (the height keeps the aspect ratio).
    seed : int
        Seed of the k-means initialisation, so a video always gets the same proposals.

    Returns
    -------
    list of int
        Frame indices, sorted.
    """
    total = frames.n_frames
    if total == 0:
        return []
    indices = np.unique(np.linspace(0, total - 1, min(samples, total)).round().astype(int))
    n = max(1, min(n, len(indices)))
    thumbs = []
    for i in indices:
        image = frames.rgb(int(i))
        height = max(1, round(image.shape[0] * size / image.shape[1]))
        grey = cv2.cvtColor(cv2.resize(image, (size, height), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        thumbs.append(grey.astype(np.float32).ravel() / 255.0)
    data = np.stack(thumbs)
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-4)
    _, assigned, centres = cv2.kmeans(data, n, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    chosen = set()
    for c in range(n):
        members = np.flatnonzero(assigned.ravel() == c)
        if len(members):
            nearest = members[np.argmin(np.linalg.norm(data[members] - centres[c], axis=1))]
            chosen.add(int(indices[nearest]))
    return sorted(chosen)
