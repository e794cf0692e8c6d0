"""ppmtrack: few-shot video keypoint tracking with Prompt Pose Matching on a frozen diffusion model.

The public API in one import::

    from ppmtrack import Engine, track_video, read_labels, read_tracks

- :class:`Engine` adapts keypoint prompts from labelled support frames and predicts keypoints on images
  (``ppmtrack.engine``: the model side, nothing of video).
- :func:`track_video` runs a whole tracking run over a file or a live stream and writes the outputs
  (``ppmtrack.pipelines``: sources, batching, writers, the CLI).
- :func:`read_labels` reads support labels (ppmtrack JSON, DeepLabCut, SLEAP, COCO).
- :func:`read_tracks` reads a tracks CSV written by ``ppmtrack track`` back into :class:`Tracks`.
- ``ppmtrack.tracker``: trajectories, Kalman filtering and smoothing (numpy only).

Every error meant for a user derives from :class:`PpmtrackError`.
"""

from ppmtrack.engine import AdaptConfig, Engine, Prediction
from ppmtrack.engine.errors import PpmtrackError
from ppmtrack.pipelines.io.csv import read_tracks_csv as read_tracks
from ppmtrack.pipelines.io.formats import read_labels
from ppmtrack.pipelines.track import track_video
from ppmtrack.tracker import Tracks

__all__ = ["AdaptConfig", "Engine", "PpmtrackError", "Prediction", "Tracks", "read_labels", "read_tracks",
           "track_video"]
