"""A tracking run with several animals: one forward per frame batch, one candidate per animal, identities kept.

``ppmtrack track VIDEO --animals N`` (or ``--animals auto --max-animals M``). Each batch of frames goes
through the engine once (:meth:`engine.api.Engine.predict_animals`: the foreground map split into animals,
each keypoint read on each animal, an appearance vector per animal); :class:`tracker.identity.IdentityTracker`
assigns the animals to identities frame by frame; each identity's keypoints are smoothed by its own filter,
which fuses the optical flow of that animal's keypoints with its detections, as for one animal (``--flow``).
Outputs: ``<stem>.csv`` with an ``individual`` column (written frame by frame, so a crash leaves every finished
frame), ``<stem>.mp4`` with one colour per animal and its name, a DeepLabCut multi-animal table on request,
and ``<stem>.summary.json`` listing the identity decisions the tracker was unsure of. See
docs/multi-animal.md.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ppmtrack.engine.errors import UsageError
from ppmtrack.pipelines.batching import BatchStats, iter_batches
from ppmtrack.pipelines.boxes import BOX_ID_MODES, BoxCounts, open_boxes, safe_individual_name, select_boxes
from ppmtrack.pipelines.detection_noise import parse_detection_noise, resolve_detection_noise
from ppmtrack.pipelines.io.csv import TracksCsvWriter, write_multi_tracks_csv
from ppmtrack.pipelines.io.files import TrackFileOptions
from ppmtrack.pipelines.io.formats import MULTI_FORMATS, check_output_formats, write_tracks_multi
from ppmtrack.pipelines.io.video import DEFAULT_VIDEO_FPS, PALETTE, AnnotatedVideoWriter
from ppmtrack.pipelines.outputs import engine_identity, input_identity, prepare_output_dir, prepare_output_set
from ppmtrack.pipelines.outputs import engine_sha256 as engine_file_sha256
from ppmtrack.pipelines.progress import expected_frames
from ppmtrack.pipelines.sources import open_source, redact, redact_url
from ppmtrack.pipelines.summary import RunSummary, record_source_counts
from ppmtrack.pipelines.track import FLOW_MODES
from ppmtrack.tracker import OnlineSmoother, SmoothingParams, Tracks
from ppmtrack.tracker.flow import FlowParams
from ppmtrack.tracker.fusion import FlowTrack, fuse_keypoints
from ppmtrack.tracker.identity import UNASSIGNED, IdentityParams, IdentityTracker

logger = logging.getLogger("ppmtrack")

MAX_LISTED_UNCERTAIN = 200


def individual_name(identity: int) -> str:
    """The name an identity gets in every output: ``animal1``, ``animal2``, ..."""
    return f"animal{identity + 1}"


def parse_animals(value: str | int) -> tuple[int | None, bool]:
    """``--animals`` → (count, exact): ``"2"`` → (2, True); ``"auto"`` → (None, False)."""
    if str(value).strip().lower() == "auto":
        return None, False
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--animals must be a number of animals or 'auto', got {value!r}") from None
    if count < 1:
        raise ValueError(f"--animals must be at least 1, got {count}")
    return count, True


class _Identities:
    """Per-identity smoothers and the kept per-frame arrays of every identity (grown as identities appear).

    With ``flow``, each identity's filter fuses the optical flow of its own keypoints from the previous frame
    (:class:`tracker.kalman.OnlineSmoother`, as for one animal): the identity assignment decides which detection
    feeds which filter, the flow follows each animal's keypoints between frames whoever was detected.
    """

    def __init__(self, k: int, params: SmoothingParams, flow: FlowParams | None = None,
                 names: list[str] | None = None):
        self.k, self.params, self.flow = k, params, flow
        self.given_names = list(names or [])
        self.smoothers: list[OnlineSmoother] = []
        self.raw: list[list[np.ndarray]] = []  # [identity][frame] (K, 2)
        self.conf: list[list[np.ndarray]] = []
        self.xy: list[list[np.ndarray]] = []
        self.visible: list[list[np.ndarray]] = []
        self.flow_displacement: list[list[np.ndarray]] = []  # [identity][frame] (K, 2), NaN where none
        self.flow_error: list[list[np.ndarray]] = []  # [identity][frame] (K,), inf where none
        self.n_frames = 0

    def add_frame(self, t: float, measured: dict[int, tuple[np.ndarray, np.ndarray]],
                  image: np.ndarray | None = None) -> None:
        while len(self.smoothers) <= max(measured, default=-1):
            self.smoothers.append(OnlineSmoother(self.k, self.params, flow=self.flow))
            for store, shape, fill in ((self.raw, (self.k, 2), np.nan), (self.conf, (self.k,), 0.0),
                                       (self.xy, (self.k, 2), np.nan), (self.visible, (self.k,), False),
                                       (self.flow_displacement, (self.k, 2), np.nan),
                                       (self.flow_error, (self.k,), np.inf)):
                store.append([np.full(shape, fill)] * self.n_frames)
        for i, smoother in enumerate(self.smoothers):
            raw, conf = measured.get(i, (np.full((self.k, 2), np.nan), np.zeros(self.k)))
            xy, visible = smoother.update(t, raw, conf, image)
            self.raw[i].append(raw)
            self.conf[i].append(conf)
            self.xy[i].append(xy)
            self.visible[i].append(visible)
            self.flow_displacement[i].append(smoother.last_flow[0])
            self.flow_error[i].append(smoother.last_flow[1])
        self.n_frames += 1

    def name(self, i: int) -> str:
        """Identity ``i``'s name in every output: the box source's id where ids are kept, else ``animal<i+1>``."""
        return self.given_names[i] if i < len(self.given_names) else individual_name(i)

    def smoothed(self, i: int, filter_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Identity ``i``'s RTS-smoothed positions and visibility, with the flow its filter measured."""
        flow = None
        if self.flow is not None:
            flow = FlowTrack(np.array(self.flow_displacement[i]).reshape(-1, self.k, 2),
                             np.array(self.flow_error[i]).reshape(-1, self.k))
        return fuse_keypoints(np.array(self.raw[i]).reshape(-1, self.k, 2), np.array(self.conf[i]).reshape(-1, self.k),
                              filter_times, flow, None, self.params, smooth=True)

    def tracks(self, names, skeleton, frames, times) -> dict[str, Tracks]:
        return {self.name(i): Tracks(names=list(names), frame=np.array(frames, dtype=np.int64),
                                           time=np.array(times), raw_xy=np.array(self.raw[i]),
                                           confidence=np.array(self.conf[i]), xy=np.array(self.xy[i]),
                                           visible=np.array(self.visible[i]), skeleton=list(skeleton))
                for i in range(len(self.smoothers))}


def track_video_multi(
    source_spec: str | Path,
    engine,
    out_dir: str | Path,
    *,
    animals: int | str = 2,
    max_animals: int = 4,
    batch_size: int = 8,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    write_video: bool = True,
    output_formats=("csv",),
    smoothing: SmoothingParams | None = None,
    detection_noise: str | float = "auto",
    flow: str = "auto",
    identity: IdentityParams | None = None,
    foreground_threshold: float = 0.5,
    crops: bool = False,
    boxes=None,
    box_ids: str = "keep",
    box_min_score: float = 0.0,
    progress: bool = True,
    stop_event: threading.Event | None = None,
    engine_path: str | Path | None = None,
    engine_name: str | None = None,
    species: str | None = None,
    stem: str | None = None,
    overwrite: bool = False,
) -> RunSummary:
    """Track several animals through a video and write the outputs to ``out_dir`` (module docstring).

    Parameters
    ----------
    source_spec, engine, out_dir, batch_size, start, stop, stride, write_video, progress, stop_event,
    engine_path, engine_name
        As for :func:`pipelines.track.track_video`.
    animals
        The number of animals in view, or ``"auto"``: up to ``max_animals``, as many as the foreground shows.
    max_animals
        With ``animals="auto"``: most animals at once.
    output_formats
        "csv" (always written), "dlc" (DeepLabCut multi-animal table), "sleap" (SLEAP analysis HDF5 with one
        track per animal), "nwb" (one NWB file per animal, ``<stem>.<individual>.nwb``:
        :func:`pipelines.io.nwb.write_nwb_multi`).
    smoothing
        Each identity's keypoint filter (``min_confidence`` also decides which keypoints count for identity).
    detection_noise
        "auto" (the engine's held-out error per keypoint) or pixels, as for :func:`pipelines.track.track_video`.
    flow
        "auto": each identity's keypoint filter fuses Lucas-Kanade optical flow between consecutive frames with
        the detections the identity assignment gives it (the same fusion as one animal, :mod:`tracker.fusion`);
        "off": detections only.
    identity
        Identity assignment parameters; ``max_animals`` and ``fixed_count`` are set from ``animals``.
    species
        ``Subject.species`` of every animal's NWB file.
    foreground_threshold
        Foreground cells at or above this fraction of the frame's maximum belong to animals.
    boxes
        A box source (:func:`pipelines.boxes.open_boxes`: a boxes CSV/JSON, SLEAP or DeepLabCut multi-animal
        tracks, an ONNX detector) or an opened :class:`pipelines.boxes.BoxSource`: each animal is read from the
        crop of its box (:meth:`engine.api.Engine.predict_boxes`) instead of the foreground split. The summary's
        ``identities.boxes`` counts what happened to the boxes.
    box_ids
        With ``boxes`` that carry ids: "keep" (the first ``animals`` ids of the source are the identities, named
        after them; boxes of other ids are dropped and counted) or "ignore" (Hungarian + appearance assignment).
    box_min_score
        Boxes scored below this are dropped (counted).
    crops
        Read each animal's keypoints from its own crop (all crops of a batch in one second forward) instead of
        the whole-frame maps (:meth:`engine.api.Engine.predict_animals`).

    Returns
    -------
    RunSummary
        Also written to ``<stem>.summary.json``; ``identities`` lists the identities and the uncertain
        identity decisions (frame, the two identities, the cost margin).
    """
    count, exact = parse_animals(animals)
    n_max = count if count is not None else int(max_animals)
    if n_max < 1:
        raise ValueError(f"max_animals must be at least 1, got {max_animals}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    extra = check_output_formats(output_formats)
    unsupported = [f for f in extra if f not in MULTI_FORMATS]
    if unsupported:
        raise ValueError(f"output format {unsupported[0]!r} is not written for several animals yet; "
                         f"choose among csv, {', '.join(MULTI_FORMATS)}")
    if flow not in FLOW_MODES:
        raise UsageError(f"flow must be one of {', '.join(FLOW_MODES)}, got {flow!r}")
    if box_ids not in BOX_ID_MODES:
        raise UsageError(f"box ids must be one of {', '.join(BOX_ID_MODES)}, got {box_ids!r}")
    box_source = open_boxes(boxes) if isinstance(boxes, (str, Path)) else boxes
    keep_ids = box_source is not None and box_source.has_ids and box_ids == "keep"
    allowed_ids = box_source.id_order[:n_max] if keep_ids else None
    id_names = []
    for i, ident in enumerate(allowed_ids or []):
        candidate = safe_individual_name(ident, individual_name(i))
        id_names.append(candidate if candidate not in id_names else individual_name(i))
    box_counts = BoxCounts()
    detection_noise = parse_detection_noise(detection_noise)
    params = smoothing if smoothing is not None else SmoothingParams()
    id_params = dataclasses.replace(identity or IdentityParams(), max_animals=n_max, fixed_count=exact)
    out_dir = prepare_output_dir(out_dir)
    halt = stop_event if stop_event is not None else threading.Event()
    engine_path = engine_path or getattr(engine, "path", None)
    engine_sha256 = engine_file_sha256(engine, engine_path)  # from the engine's own read of its file
    identity = engine_identity(engine, engine_path, engine_sha256)
    source = open_source(source_spec, start=start, stop=stop, stride=stride, queue_size=max(8, batch_size),
                         stop_event=halt)
    info = source.info
    params, noise_record = resolve_detection_noise(getattr(engine, "info", {}), list(engine.names), params,
                                                   detection_noise, (info.height, info.width))
    try:  # the same output-set rules as one animal: inputs never replaced, results never silently overwritten
        paths = prepare_output_set(source_spec, out_dir, stem=stem, write_video=write_video, identity=identity,
                                   overwrite=overwrite).paths()
    except BaseException:
        source.close()
        raise
    stem = paths["csv"].stem
    name = engine_name or (Path(engine_path).stem if engine_path else "engine")
    summary = RunSummary(
        input={"source": redact_url(source_spec), "path": input_identity(source_spec), "live": info.is_live,
               "width": info.width, "height": info.height, "fps": info.fps, "codec": info.codec,
               "n_frames_estimate": info.n_frames, "rotation": info.rotation,
               "start": start, "stop": stop, "stride": stride},
        engine={"path": identity["path"], "name": name, "sha256": engine_sha256, "model": engine.model.name,
                "keypoints": list(engine.names), "skeleton": [list(e) for e in engine.skeleton],
                "resolution": engine.resolution,
                "device": str(engine.model.device)},
        settings={"batch_size": batch_size, "animals": "auto" if count is None else count, "max_animals": n_max,
                  "smooth": "causal" if info.is_live else "rts", "smoothing": dataclasses.asdict(params),
                  "flow": "off" if flow == "off" else "lk", "detection_noise": noise_record,
                  "identity": dataclasses.asdict(id_params), "foreground_threshold": foreground_threshold,
                  "crops": bool(crops),
                  "boxes": None if box_source is None else {**box_source.describe(), "ids": box_ids if
                                                            box_source.has_ids else "none in the source",
                                                            "min_score": box_min_score},
                  "output_formats": ["csv", *extra], "write_video": write_video},
        outputs={"csv": str(paths["csv"]), "video": str(paths["video"]) if paths["video"] else None,
                 "summary": str(paths["summary"]), "formats": []},
    )
    k = len(engine.names)
    tracker = IdentityTracker(k, id_params, params)
    identities = _Identities(k, params, flow=None if flow == "off" else FlowParams(), names=id_names)
    id_index = {ident: i for i, ident in enumerate(allowed_ids or [])}
    frames_seen: list[int] = []
    times_seen: list[float] = []  # the frames' own times, as in the CSV
    filter_times: list[float] = []  # strictly increasing, as the filters saw them
    video = None
    try:
        csv_writer = TracksCsvWriter(paths["csv"], engine.names, individuals=True)
        if write_video:
            video = _AnimalVideo(paths["video"], info, engine, params, n_max, name=identities.name)
        summary.write(paths["summary"])
    except BaseException:
        source.close()
        raise
    bar = None
    if progress and not info.is_live:
        from tqdm import tqdm

        bar = tqdm(total=expected_frames(info.n_frames, start, stop, stride), unit="frame", file=sys.stderr,
                   desc=stem, dynamic_ncols=True)
    t_start = time.perf_counter()
    failure: BaseException | None = None
    last_t: float | None = None
    batch_stats = BatchStats()
    batches = iter_batches(source, batch_size, fill=not info.is_live, stop_event=halt, stats=batch_stats)
    try:
        for batch in batches:
            if batch.gap is not None:  # recorded from the source's outages at the end (record_source_counts)
                continue
            t0 = time.perf_counter()
            images = np.stack([f.image for f in batch.frames])
            if box_source is None:
                found = engine.predict_animals(images, n_max, exact=exact, threshold=foreground_threshold,
                                               crops=crops)
                chosen = [None] * len(found)
            else:
                chosen = [select_boxes(box_source.boxes_at(f.index, f.image), f.image.shape[:2], n_max, box_counts,
                                       allowed_ids, box_min_score) for f in batch.frames]
                found = engine.predict_boxes(images, [c.xyxy for c in chosen])
            summary.stages["inference"].add(time.perf_counter() - t0, len(batch.frames))
            t1 = time.perf_counter()
            for frame, animals_here, frame_boxes in zip(batch.frames, found, chosen, strict=True):
                t = frame.time if last_t is None else max(frame.time, last_t + 1e-6)
                last_t = t
                if keep_ids:  # the source's ids are the identities
                    ids = np.array([id_index[ident] for ident in frame_boxes.ids], dtype=np.int64)
                else:
                    ids = tracker.update(frame.index, t, animals_here.keypoints, animals_here.confidence,
                                         animals_here.appearance)
                measured = {int(i): (animals_here.keypoints[d], animals_here.confidence[d])
                            for d, i in enumerate(ids) if i != UNASSIGNED}
                identities.add_frame(t, measured, frame.image)
                frames_seen.append(frame.index)
                times_seen.append(frame.time)
                filter_times.append(t)
                for i in range(len(identities.smoothers)):
                    csv_writer.write_frame(frame.index, frame.time, identities.xy[i][-1], identities.conf[i][-1],
                                           identities.visible[i][-1], identities.raw[i][-1],
                                           individual=identities.name(i))
                if video is not None:
                    video.write(frame, identities)
                summary.frames_processed += 1
                if summary.first_frame is None:
                    summary.first_frame = frame.index
                summary.last_frame = frame.index
            summary.stages["smoothing"].add(time.perf_counter() - t1, len(batch.frames))
            if bar is not None:
                bar.update(len(batch.frames))
    except KeyboardInterrupt:
        halt.set()
    except BaseException as exc:  # recorded in the summary, raised again below
        failure = exc
    finally:
        source.close()
        batches.close()
        if bar is not None:
            bar.close()
        csv_writer.close()
        if video is not None:
            try:
                video.close()
            except BaseException as exc:
                failure = failure or exc
    record_source_counts(summary, source.stats, batch_stats)  # damaged, missing and dropped frames, as for one animal
    summary.identities = {
        "individuals": [identities.name(i) for i in range(len(identities.smoothers))],
        "uncertain_count": len(tracker.uncertain),
        "uncertain": [d.to_dict() for d in tracker.uncertain[:MAX_LISTED_UNCERTAIN]],
    }
    if box_source is not None:
        summary.identities["boxes"] = box_counts.to_dict()
        if keep_ids:
            summary.identities["source_ids"] = dict(zip(id_names, allowed_ids, strict=True))
    if failure is None:
        summary.status = "interrupted" if halt.is_set() else "complete"
        if summary.frames_processed and identities.smoothers:
            try:
                _finish(summary, identities, engine, paths, extra, stem, name, frames_seen, times_seen, filter_times,
                        rts=not info.is_live and summary.status == "complete",
                        video_path=None if info.is_live else source_spec, species=species)
            except BaseException as exc:
                failure = exc
    if failure is not None:
        summary.status = f"failed: {redact(failure)}" if str(failure) else f"failed: {type(failure).__name__}"
    summary.wall_time_s = time.perf_counter() - t_start
    summary.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summary.write(paths["summary"])
    if failure is not None:
        raise failure
    return summary


def _finish(summary, identities: _Identities, engine, paths, extra, stem, engine_name, frames, times,
            filter_times, rts: bool, video_path=None, species: str | None = None) -> None:
    """RTS-smooth each identity and rewrite the CSV atomically (complete file runs); the extra formats."""
    tracks = identities.tracks(engine.names, engine.skeleton, frames, times)
    if rts:
        for i, (name, animal) in enumerate(tracks.items()):
            xy, visible = identities.smoothed(i, np.array(filter_times))
            tracks[name] = dataclasses.replace(animal, xy=xy, visible=visible)
        write_multi_tracks_csv(tracks, paths["csv"])
        summary.csv_positions = "rts"
    written = write_tracks_multi(tracks, paths["csv"].parent, stem, extra,
                                 TrackFileOptions(engine_name=engine_name, video_path=video_path,
                                                  fps=summary.input["fps"], species=species))
    summary.outputs["formats"] = [str(p) for p in written]


class _AnimalVideo:
    """The annotated video of several animals: each animal in its own colour, its name by its first keypoint."""

    def __init__(self, path, info, engine, params: SmoothingParams, n_max: int, name=individual_name):
        self.k = len(engine.names)
        self.n = n_max
        self.name = name
        names = [f"{name(i)}:{n}" for i in range(n_max) for n in engine.names]
        skeleton = [(f"{name(i)}:{a}", f"{name(i)}:{b}")
                    for i in range(n_max) for a, b in engine.skeleton]
        colours = [PALETTE[i % len(PALETTE)] for i in range(n_max) for _ in engine.names]
        self.writer = AnnotatedVideoWriter(path, info.width, info.height,
                                           info.fps_fraction or info.fps or DEFAULT_VIDEO_FPS, names, skeleton,
                                           min_confidence=params.min_confidence, colours=colours,
                                           legend_entries=[(name(i), PALETTE[i % len(PALETTE)])
                                                           for i in range(n_max)])
        self.first_time: float | None = None

    def write(self, frame, identities: _Identities) -> None:
        if frame.image.shape[:2] != (self.writer.height, self.writer.width):
            return
        if self.first_time is None:
            self.first_time = frame.time
        xy = np.full((self.n, self.k, 2), np.nan)
        conf = np.zeros((self.n, self.k))
        visible = np.zeros((self.n, self.k), bool)
        labels = []
        for i in range(min(self.n, len(identities.smoothers))):  # identities beyond the drawn slots: CSV only
            xy[i], conf[i], visible[i] = identities.xy[i][-1], identities.conf[i][-1], identities.visible[i][-1]
            seen = np.flatnonzero(np.isfinite(xy[i]).all(axis=1))
            if len(seen):
                labels.append((self.name(i), xy[i][seen[0]] + [6, -6], PALETTE[i % len(PALETTE)]))
        self.writer.write(frame.image, xy.reshape(-1, 2), conf.reshape(-1), visible.reshape(-1),
                          time=frame.time - self.first_time, labels=labels)

    def close(self) -> None:
        self.writer.close()
