"""The ``ppmtrack`` command line: adapt an engine, track videos and streams, evaluate, convert labels.

See docs/cli.md. Errors the user can fix (missing files, unreadable inputs, a folder that cannot be written)
print one line ``ppmtrack: error: …`` and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from ppmtrack.engine.errors import PpmtrackError, UsageError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
LABEL_FORMAT_CHOICES = ("auto", "ppmtrack", "dlc", "sleap", "coco")

logger = logging.getLogger("ppmtrack")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples' line breaks and shows defaults, except empty ones (None, False)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (so captured output sees it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Formatter(logging.Formatter):
    """One line per record; the credentials of any URL in it are replaced by ``***``."""

    def format(self, record):
        from ppmtrack.pipelines.sources import redact

        if record.levelno < logging.WARNING:
            return redact(f"ppmtrack: {record.getMessage()}")
        return redact(f"ppmtrack: {record.levelname.lower()}: {record.getMessage()}")


def _configure_logging(debug: bool) -> None:
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Formatter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if debug else logging.INFO)


# ---- adaptation -------------------------------------------------------------------------------------------

def _adapt_config(args):
    from ppmtrack.engine import AdaptConfig

    options = ("steps", "lr", "fg_steps", "fg_lr", "loss", "views_per_frame", "resolution", "layers", "seed")
    values = {option: getattr(args, option) for option in options if getattr(args, option) is not None}
    if args.no_augment:
        values["views_per_frame"] = 1
    config = AdaptConfig(**values)  # validates the values (e.g. a learning rate must be finite and above 0)
    config.augment.flip = args.flip
    if getattr(args, "crop_views", None) is not None:
        config.crop.views_per_frame = args.crop_views
    return config


def _read_support(args):
    """The support labels and the engine's support set (images loaded)."""
    from ppmtrack.pipelines.io.formats import read_labels

    fmt = None if args.format == "auto" else args.format
    labels = read_labels(args.support, fmt=fmt, individual=args.individual)
    return labels, labels.to_support()


def _validation_config(args):
    """``--validate``: what validation may choose — not a learning rate or step count the user fixed."""
    from ppmtrack.engine.validate import ValidationConfig

    config = ValidationConfig(mode=args.validate)
    if args.lr is not None:
        config.learning_rates = (args.lr,)
    if args.steps is not None:
        config.step_fractions = (1.0,)
    if args.lr is not None or args.steps is not None or getattr(args, "loss", None) is not None:
        config.paper_setting = False  # the paper's setting has its own rate, steps and loss
    return config


def _adapt_engine(args, model: str):
    """Adapt on ``args.support`` with a progress display; print losses, time, validation and the support-frame
    error."""
    from ppmtrack.engine import Engine
    from ppmtrack.pipelines.anchor_discovery import support_frame_records
    from ppmtrack.pipelines.engine_report import format_validation
    from ppmtrack.pipelines.progress import progress_bar

    labels, support = _read_support(args)
    config = _adapt_config(args)
    validation = _validation_config(args)
    logger.info("adapting %d keypoints on %d support frames with model %s", len(support.names),
                len(support.images), model)
    totals = {"foreground": config.fg_steps, "keypoints": config.steps}  # validation adds its steps when it starts
    bar = progress_bar(sum(totals.values()), "preparing views", "step")
    names = {"foreground": "foreground prompt", "validation": "validating settings", "keypoints": "keypoint prompts"}

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        if totals.get(stage) != total:  # validation started, the foreground plateaued, or the steps were chosen
            totals[stage] = total
            bar.total = sum(totals.values())
        bar.set_description(names.get(stage, stage))
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.update(1)

    t0 = time.perf_counter()
    try:
        engine = Engine.adapt(support, model=model, config=config, device=args.device, dtype=args.dtype,
                              progress=progress, foreground=args.foreground, validation=validation,
                              init=args.init, species=getattr(args, "species", None))
    finally:
        bar.close()
    engine.info["support_frames"] = support_frame_records(labels, support.images)  # anchors for 'track'
    seconds = time.perf_counter() - t0
    adaptation = engine.info.get("adaptation", {})
    print(f"adapted {len(support.names)} keypoints on {len(support.images)} support frames "
          f"({adaptation.get('views', '?')} views) in {seconds:.1f} s on {adaptation.get('device', '?')}")
    fg_losses = adaptation.get("foreground_loss") or []
    if fg_losses:
        stop = "plateau" if adaptation["foreground_steps"] < config.fg_steps else "step cap"
        floor = adaptation["foreground_loss_floor"]  # None: fewer steps than the plateau window
        print(f"foreground loss: {fg_losses[0]:.4g} → {fg_losses[-1]:.4g} in {adaptation['foreground_steps']} steps "
              f"({stop}" + (f"; floor {floor:.4g})" if floor is not None else ")"))
    kp_losses = adaptation.get("keypoint_loss") or []
    if kp_losses:
        print(f"keypoint loss: {kp_losses[0]:.4g} → {kp_losses[-1]:.4g} in {engine.config.steps} steps "
              f"(lr {engine.config.lr:g})")
    if validation.mode != "off":
        print(format_validation(engine.info.get("validation", {}), engine.names))
    skipped = {stage: n for stage, n in adaptation.get("skipped_steps", {}).items() if n}
    if skipped:
        logger.warning("skipped %s optimisation steps whose float16 gradients overflowed (the loss scale was "
                       "lowered); many skips mean fewer effective steps: consider --dtype float32 or bfloat16",
                       " and ".join(f"{n} {stage}" for stage, n in skipped.items()))
    from ppmtrack.pipelines.evaluate import format_support_error

    print(format_support_error(engine, support))
    return engine


def _check_engine_output(path: Path) -> None:
    from ppmtrack.pipelines.outputs import OutputError, prepare_output_dir

    if path.is_dir():
        raise OutputError(f"{path}: is a folder; name the engine file, e.g. -o {path / 'animal.engine'}")
    prepare_output_dir(path.parent if str(path.parent) else Path("."))


def run_adapt(args) -> int:
    """``ppmtrack adapt``: adapt an engine on a support set and save it."""
    out = Path(args.output)
    _check_engine_output(out)
    engine = _adapt_engine(args, args.model)
    engine.save(out)
    print(f"wrote {out}")
    return 0


def run_info(args) -> int:
    """``ppmtrack info``: what an engine file holds (no model is loaded)."""
    import json

    from ppmtrack.pipelines.engine_report import engine_description, format_engine_info

    description = engine_description(args.engine)
    if args.json:
        print(json.dumps(description, indent=2, sort_keys=True, allow_nan=False, default=str))
    else:
        print(format_engine_info(description))
    return 0


def _add_info_command(commands, debug) -> None:
    info = commands.add_parser(
        "info", parents=[debug], formatter_class=_HelpFormatter, help="show what an engine file holds",
        description="Print an engine file's keypoints, skeleton, model (id and revision), input resolution and "
                    "layers, adaptation settings and losses, the held-out validation of 'adapt' (settings tried, "
                    "the choice, PCK and error per keypoint, advice), its support frames, its crop policy when "
                    "it has one, and the file's SHA-256. Loads no model.",
        epilog="examples:\n  ppmtrack info lizard.engine\n  ppmtrack info lizard.engine --json | jq .meta.info."
               "validation\n",
    )
    info.add_argument("engine", metavar="ENGINE", help="engine file written by 'ppmtrack adapt'")
    info.add_argument("--json", action="store_true",
                      help="print JSON (path, bytes, sha256, tensor shapes and the file's whole metadata)")
    info.set_defaults(run=run_info)


# ---- tracking ---------------------------------------------------------------------------------------------

class _StopOnSignal:
    """While active, SIGINT/SIGTERM set ``event`` (the run then closes its outputs); a second one aborts."""

    def __init__(self, event: threading.Event):
        self.event = event
        self.previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        sys.stderr.write(f"\nppmtrack: {signal.Signals(signum).name}: stopping and closing the outputs "
                         "(press Ctrl-C again to abort at once)\n")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def support_key(args, model: str) -> str:
    """A hash of what ``track --support`` adapts from: the support file (or folder), the size and time of the
    images and videos it names, and every adaptation setting. Equal keys: the saved engine can be reused."""
    import hashlib
    import json

    from ppmtrack.pipelines.io.formats import read_labels

    digest = hashlib.sha256()
    support = Path(args.support)
    files = sorted(p for p in support.rglob("*") if p.is_file()) if support.is_dir() else [support]
    for path in files:
        digest.update(str(path.relative_to(support) if support.is_dir() else path.name).encode())
        digest.update(path.read_bytes())
    labels = read_labels(support, fmt=None if args.format == "auto" else args.format, individual=args.individual)
    media = sorted({str(p) for ref in labels.frames for p in (ref.image, ref.video) if p is not None})
    stats = [(m, os.stat(m).st_size, os.stat(m).st_mtime_ns) for m in media if os.path.exists(m)]
    settings = {"model": model, "config": _adapt_config(args).to_dict(), "foreground": args.foreground,
                "dtype": args.dtype, "media": stats, "validate": args.validate}
    if args.init != "foreground":  # (keys of engines made before --init stay the same)
        settings.update(init=args.init, species=getattr(args, "species", None))
    if args.foreground and os.path.isfile(args.foreground):
        settings["foreground_sha256"] = hashlib.sha256(Path(args.foreground).read_bytes()).hexdigest()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _engine_support_key(path: Path) -> str | None:
    """The support key stored in an engine file by ``track --support`` (None: no file, or none stored)."""
    from ppmtrack.engine.engine_file import read_engine_file
    from ppmtrack.engine.errors import PpmtrackError

    if not path.is_file():
        return None
    try:
        return read_engine_file(path)[1].get("info", {}).get("support_key")
    except (PpmtrackError, OSError, ValueError, KeyError):
        return None


def _support_engine_path(out_dir: Path, stem: str, key: str) -> tuple[Path, list[Path]]:
    """Where ``track --support`` finds or writes its engine: ``STEM.engine``, ``STEM.2.engine``, … in ``out_dir``.

    Returns (path, engines kept). The path is the existing engine adapted on the same support and settings (reused),
    else the first free name: an engine file that is there already is never written over (another support file or
    other settings made it, or it was renamed into place) and is listed as kept."""
    taken = []
    for n in itertools.count(1):
        path = out_dir / (f"{stem}.engine" if n == 1 else f"{stem}.{n}.engine")
        if not path.exists():
            return path, taken
        if path.is_file() and _engine_support_key(path) == key:
            return path, taken
        taken.append(path)
    raise AssertionError("unreachable")


def _speed_config(args):
    """The inference optimisations asked for on the command line (docs/performance.md)."""
    from ppmtrack.engine.speed import SpeedConfig

    return SpeedConfig(channels_last=args.channels_last, compile=args.compile, cuda_graphs=args.cuda_graphs,
                       encoder=args.encoder, reuse_every=args.reuse_every)


def _load_engine(args, out_dir: Path, inputs: list[str], device: str | None = None):
    """The engine of ``track``: --engine (torch or ONNX) or adapted on --support; returns (engine, path)."""
    from ppmtrack.engine.loading import engine_backend, load_engine
    from ppmtrack.pipelines.sources import is_live_spec, open_source

    if args.support:  # a bad file fails now, not after a long adaptation
        for spec in inputs:
            if not is_live_spec(spec):
                open_source(spec).close()
    if engine_backend(args.engine, args.backend) == "onnx":
        if not args.engine:
            raise UsageError("--backend onnx needs --engine FILE.onnx (make one with 'ppmtrack export-onnx')")
        return load_engine(args.engine, "onnx"), Path(args.engine)
    if args.engine:
        engine_path = Path(args.engine)
    else:
        from ppmtrack.engine import DEFAULT_MODEL

        key = support_key(args, args.model or DEFAULT_MODEL)
        engine_path, taken = _support_engine_path(out_dir, Path(args.support).stem, key)
        if engine_path.is_file():
            print(f"reusing {engine_path}: adapted on the same support file and settings")
        else:
            adapted = _adapt_engine(args, args.model or DEFAULT_MODEL)
            adapted.info["support_key"] = key
            adapted.save(engine_path)
            kept = f"; kept {', '.join(str(p) for p in taken)} (other support or settings)" if taken else ""
            print(f"wrote {engine_path} (reuse it with --engine){kept}")
    # one way to build the tracking engine, adapted just now or not: from its file, with the speed switches
    return load_engine(engine_path, "torch", model=args.model, device=device or args.device, dtype=args.dtype,
                       speed=_speed_config(args)), engine_path


def _track_kwargs(args, formats: list[str]) -> dict:
    from ppmtrack.tracker import SmoothingParams

    smoothing = None if args.min_confidence is None else SmoothingParams(min_confidence=args.min_confidence)
    return dict(batch_size=args.batch_size, start=args.start, stop=args.stop, stride=args.stride,
                write_video=not args.no_video, output_formats=["csv", *formats], smoothing=smoothing,
                smooth=args.smooth, flow=args.flow, detection_noise=args.detection_noise,
                drop_policy=args.drop_policy,
                ffmpeg_options={"rtsp_transport": args.rtsp_transport} if args.rtsp_transport else None,
                max_reconnect_s=args.max_reconnect_s, resume=args.resume, plots=args.plots,
                with_raw=args.with_raw, subject_id=args.subject_id, species=args.species, crop=args.crop,
                crop_size=args.crop_size)


def _is_batch(args, inputs: list[str]) -> bool:
    """Several inputs, or one named by a folder, glob or list: a batch (with its batch summary)."""
    return len(inputs) > 1 or bool(args.devices or args.ray) or any(
        Path(spec).is_dir() or Path(spec).suffix.lower() in (".txt", ".list", ".lst") or "*" in spec
        or "?" in spec for spec in args.videos)


def run_track(args) -> int:
    """``ppmtrack track``: track video files or streams with an engine file or a support set."""
    from ppmtrack.pipelines.batch import expand_inputs, plan_batch
    from ppmtrack.pipelines.io.formats import check_output_formats
    from ppmtrack.pipelines.outputs import engine_identity, engine_sha256, frame_selection, prepare_output_dir
    from ppmtrack.pipelines.sources import is_live_spec, probe_source
    from ppmtrack.pipelines.track import check_selection, track_video

    formats = check_output_formats(args.output_format.split(","))
    check_selection(args.start, args.stop, args.stride)
    if args.plots:  # fail now, not after the run, when matplotlib is missing
        from ppmtrack.pipelines.plots import pyplot

        pyplot()
    inputs = expand_inputs(args.videos, args.videotype, args.recursive)
    live = [spec for spec in inputs if is_live_spec(spec)]
    if live and len(live) != len(inputs):
        raise UsageError("live streams and video files cannot be tracked in one command; run them separately")
    if args.boxes is not None and args.animals is None:
        raise UsageError("--boxes gives the boxes of several animals: add --animals N (docs/multi-animal.md)")
    if args.animals is not None:
        _check_multi_options(args)
        if len(inputs) != 1 or live:
            raise UsageError("--animals tracks one video file per command (several videos or streams: not yet)")
    if len(inputs) == 1 and not live:  # a bad file or an empty selection fails now, before loading a model
        check_selection(args.start, args.stop, args.stride, probe_source(inputs[0]).n_frames)
    if args.detector != "ppm" and (args.animals is not None or args.ray or args.devices):
        raise UsageError(f"--detector {args.detector} tracks one animal in this process (not with --animals, "
                         "--devices or --ray)")
    out_dir = prepare_output_dir(args.output)
    if args.ray:
        if live or not args.engine:
            raise UsageError("--ray tracks video files with an engine file (--engine)")
        return _run_ray(args, out_dir, inputs, formats)
    engine, engine_path = _load_engine(args, out_dir, inputs, (_devices(args) or [None])[0])
    if args.detector != "ppm":  # correspondence of the keypoints' descriptors as the (second) detector
        from ppmtrack.engine.correspond_engine import DetectorEngine

        engine = DetectorEngine(engine, args.detector)
    sha = engine_sha256(engine, engine_path)  # taken when the engine read its file
    items = plan_batch(inputs, out_dir, engine_identity(engine, engine_path, sha), args.overwrite,
                       frame_selection(args.start, args.stop, args.stride))
    kwargs = _track_kwargs(args, formats)
    stop_event = threading.Event()
    if len(live) > 1:
        return _run_streams(args, live, items, engine, engine_path, out_dir, kwargs, stop_event)
    if _is_batch(args, inputs):
        return _run_batch(args, items, engine, engine_path, out_dir, kwargs, stop_event)
    item = items[0]
    if item.status == "skipped":
        print(f"skipped {item.video}: complete results of this engine are in {item.summary} "
              "(--overwrite redoes them)")
        return 0
    if args.animals is not None:
        return _run_track_multi(args, item, engine, engine_path, out_dir, formats, stop_event)
    with _StopOnSignal(stop_event):
        summary = track_video(item.spec, engine, out_dir, stem=item.stem, overwrite=args.overwrite,
                              progress=not args.quiet, stop_event=stop_event, engine_path=engine_path, **kwargs)
    print(summary.describe())
    outputs = [summary.outputs["csv"], summary.outputs["video"], *summary.outputs["formats"],
               *summary.outputs.get("plots", []), summary.outputs["summary"]]
    print("wrote " + ", ".join(str(p) for p in outputs if p))
    return EXIT_INTERRUPTED if summary.status == "interrupted" else 0


def _devices(args) -> list[str]:
    from ppmtrack.pipelines.batch import parse_devices

    return parse_devices(args.devices)


def _batch_exit(result, out_dir: Path, extra: dict) -> int:
    """Write the batch summary, print its line; exit status 2 if a video failed, 130 if interrupted."""
    from ppmtrack.pipelines.batch import write_batch_summary

    result.csv_path, result.json_path = write_batch_summary(result.items, out_dir, extra)
    print(result.describe())
    for item in result.failed:
        print(f"  failed: {item.video}: {item.error}")
    print(f"wrote {result.csv_path}, {result.json_path}")
    if result.failed:
        print(f"ppmtrack: error: {len(result.failed)} of {len(result.items)} videos failed (see "
              f"{result.csv_path})", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_INTERRUPTED if any(i.status in ("interrupted", "not run") for i in result.items) else 0


def _run_batch(args, items, engine, engine_path, out_dir, kwargs, stop_event) -> int:
    from ppmtrack.engine import Engine, load_engine
    from ppmtrack.pipelines.batch import BatchResult, run_batch

    devices = _devices(args) or [str(getattr(getattr(engine, "model", None), "device", "cpu"))]

    def loader(device: str, first: bool):
        if first or not isinstance(engine, Engine):  # an ONNX session is shared by the workers
            return lambda: engine
        return lambda: load_engine(engine_path, "torch", model=args.model, device=device, dtype=args.dtype,
                                   speed=_speed_config(args))

    loaders = [(f"{device}#{i}", loader(device, i == 0)) for i, device in enumerate(devices)]
    with _StopOnSignal(stop_event):
        run_batch(items, out_dir, loaders, track_kwargs={**kwargs, "engine_path": engine_path},
                  overwrite=args.overwrite, progress=not args.quiet, stop_event=stop_event)
    return _batch_exit(BatchResult(items), out_dir, {"engine": str(Path(engine_path).resolve()),
                                                     "workers": devices})


def _run_ray(args, out_dir, inputs, formats) -> int:
    from ppmtrack.pipelines.batch import BatchResult, plan_batch
    from ppmtrack.pipelines.cluster import run_batch_ray
    from ppmtrack.pipelines.outputs import engine_file_identity, frame_selection

    items = plan_batch(inputs, out_dir, engine_file_identity(args.engine, args.model), args.overwrite,
                       frame_selection(args.start, args.stop, args.stride))
    load_kwargs = {"model": args.model, "device": args.device, "dtype": args.dtype}
    stop_event = threading.Event()
    with _StopOnSignal(stop_event):
        # on Ray, --resume is not needed: complete videos are skipped and unfinished ones redone from the start
        run_batch_ray(items, out_dir, args.engine, args.ray, track_kwargs={**_track_kwargs(args, formats),
                                                                           "resume": False},
                      load_kwargs=load_kwargs, workers=args.ray_workers, overwrite=args.overwrite,
                      progress=not args.quiet, stop_event=stop_event)
    return _batch_exit(BatchResult(items), out_dir, {"engine": str(Path(args.engine).resolve()),
                                                     "ray": args.ray})


def _run_streams(args, urls, items, engine, engine_path, out_dir, kwargs, stop_event) -> int:
    from ppmtrack.pipelines.batch import BatchResult, fill_from_summary
    from ppmtrack.pipelines.multistream import track_streams

    with _StopOnSignal(stop_event):
        results = track_streams(urls, engine, out_dir, stems={i.video: i.stem for i in items},
                                stop_event=stop_event, max_batch=args.batch_size * len(urls),
                                progress=not args.quiet, engine_path=engine_path, overwrite=args.overwrite,
                                **kwargs)
    for item in items:
        outcome = results.get(item.spec)
        if isinstance(outcome, BaseException) or outcome is None:
            item.status, item.error = "failed", " ".join(str(outcome).split()) or type(outcome).__name__
        else:
            item.status = outcome.status
            fill_from_summary(item, outcome.to_dict())
    return _batch_exit(BatchResult(items), out_dir, {"engine": str(Path(engine_path).resolve()),
                                                     "streams": len(urls)})


def _check_multi_options(args) -> None:
    """Refuse, before any model is loaded, what ``track --animals`` does not do (yet) instead of ignoring it."""
    from ppmtrack.pipelines.track_multi import parse_animals

    parse_animals(args.animals)
    if args.boxes is not None:  # a bad box source fails now, before a model is loaded
        from ppmtrack.pipelines.boxes import open_boxes

        open_boxes(args.boxes)
    from ppmtrack.engine.loading import engine_backend

    if engine_backend(args.engine, args.backend) == "onnx":
        raise UsageError("--animals needs the torch backend (an .engine file), not an ONNX export")
    unsupported = [flag for flag, used in (("--resume", args.resume), ("--plots", args.plots),
                                           ("--with-raw", args.with_raw), ("--subject-id", args.subject_id),
                                           ("--smooth", args.smooth != "auto"))
                   if used]
    if unsupported:
        raise UsageError(f"{unsupported[0]} is not available with --animals yet (see docs/multi-animal.md); "
                         "leave it out")


def _run_track_multi(args, item, engine, engine_path, out_dir, formats, stop_event) -> int:
    """``ppmtrack track --animals N|auto``: several animals with identities (docs/multi-animal.md)."""
    from ppmtrack.pipelines.track_multi import track_video_multi
    from ppmtrack.tracker import SmoothingParams
    from ppmtrack.tracker.identity import IdentityParams

    smoothing = None if args.min_confidence is None else SmoothingParams(min_confidence=args.min_confidence)

    identity = IdentityParams(max_absent_s=args.max_absent_s, motion=args.identity_motion)
    with _StopOnSignal(stop_event):
        summary = track_video_multi(
            item.spec, engine, out_dir, stem=item.stem, animals=args.animals, max_animals=args.max_animals,
            batch_size=args.batch_size, start=args.start, stop=args.stop, stride=args.stride,
            write_video=not args.no_video, output_formats=["csv", *formats], smoothing=smoothing,
            detection_noise=args.detection_noise, flow=args.flow, identity=identity, progress=not args.quiet,
            stop_event=stop_event, engine_path=engine_path,
            species=args.species, crops=args.animal_crops, overwrite=args.overwrite,
            boxes=args.boxes, box_ids=args.box_ids, box_min_score=args.box_min_score,
        )
    print(summary.describe())
    ids = summary.identities
    print(f"{len(ids['individuals'])} identities ({', '.join(ids['individuals'])}); "
          f"{ids['uncertain_count']} uncertain identity decisions"
          + (f", first at frames {', '.join(str(d['frame']) for d in ids['uncertain'][:5])}"
             if ids["uncertain"] else ""))
    outputs = [summary.outputs["csv"], summary.outputs["video"], *summary.outputs["formats"],
               summary.outputs["summary"]]
    print("wrote " + ", ".join(str(p) for p in outputs if p))
    return EXIT_INTERRUPTED if summary.status == "interrupted" else 0


# ---- evaluation and conversion ----------------------------------------------------------------------------

def run_eval(args) -> int:
    """``ppmtrack eval``: PCK and pixel error of a tracks CSV against ground-truth labels."""
    from ppmtrack.pipelines.evaluate import evaluate, evaluate_multi, format_multi_report, format_report
    from ppmtrack.pipelines.io.csv import MULTI_HEADER, read_multi_tracks_csv, read_tracks_csv
    from ppmtrack.pipelines.io.formats import read_labels

    truth = read_labels(args.truth, fmt=None if args.format == "auto" else args.format, individual=args.individual)
    try:
        with open(args.tracks, encoding="utf-8") as f:
            several = f.readline().rstrip("\r\n") == MULTI_HEADER
    except (OSError, UnicodeDecodeError) as exc:
        from ppmtrack.pipelines.io.csv import TracksFileError

        raise TracksFileError(f"{args.tracks}: cannot read the tracks CSV ({exc})") from None
    if several:
        result = evaluate_multi(read_multi_tracks_csv(args.tracks), truth, use="raw" if args.raw else "xy")
        sys.stdout.write(format_multi_report(result))
        return 0
    if truth.instances is not None:  # one animal's tracks against several animals' truth: which one is meant?
        raise UsageError(f"{args.truth}: labels {len(truth.individuals)} animals ({', '.join(truth.individuals)}) "
                         f"but {args.tracks} tracks one; score it against one of them with --individual NAME, "
                         "or track with --animals")
    import numpy as np

    from ppmtrack.pipelines.evaluate import support_frames_of_run

    tracks = read_tracks_csv(args.tracks)
    exclude, note = set(), ""
    if not args.include_support:
        exclude, note = support_frames_of_run(args.tracks, args.summary, args.engine, args.truth_video)
    options = dict(video=args.truth_video, tracked_span_only=args.tracked_span, exclude_frames=exclude)
    result = evaluate(tracks, truth, use="raw" if args.raw else "xy", **options)
    detection_only = None
    if not args.raw and np.isfinite(tracks.raw_xy).any() and not np.array_equal(tracks.raw_xy, tracks.xy,
                                                                                   equal_nan=True):
        detection_only = evaluate(tracks, truth, use="raw", **options)
    report = format_report(result, detection_only, note)
    if not args.include_support and note and not result.support_frames_excluded:
        report = report.replace("\n", f"\nno support frame of the engine lies in this video ({note}): a new session, "
                                "the engine and the flow alone\n", 1)
    elif result.support_frames_excluded:
        report = report.replace("\n", "\nthe tracks are anchored at the support frames in this video: fused PCK is "
                                "an anchored number; detection-only PCK measures the engine\n", 1)
    sys.stdout.write(report)
    return 0


def run_convert_labels(args) -> int:
    """``ppmtrack convert-labels``: any supported labels file → ppmtrack annotation JSON."""
    from ppmtrack.pipelines.io.annotation import write_annotation
    from ppmtrack.pipelines.io.formats import read_labels

    labels = read_labels(args.input, fmt=None if args.format == "auto" else args.format,
                         individual=args.individual)
    write_annotation(labels, args.output)
    print(f"wrote {args.output}: {len(labels.frames)} frames, {len(labels.names)} keypoints")
    return 0


def run_export_onnx(args) -> int:
    """``ppmtrack export-onnx``: write an adapted engine as an ONNX model (float32)."""
    from ppmtrack.engine import Engine
    from ppmtrack.engine.onnx_export import export_onnx

    engine = Engine.load(args.engine, model=args.model, device=args.device or "cpu", dtype="float32")
    path = export_onnx(engine, args.output, with_maps=args.with_maps, opset=args.opset,
                       batch_size=args.batch_size, name=Path(args.engine).stem)
    print(f"wrote {path} (input: letterboxed {engine.resolution}x{engine.resolution} images)")
    return 0


def run_pretrain_foreground(args) -> int:
    """``ppmtrack pretrain-foreground``: fit a reusable foreground prompt on annotated images of other animals."""
    from ppmtrack.engine.foreground import pretrain_foreground, save_foreground
    from ppmtrack.pipelines.io.formats import read_labels
    from ppmtrack.pipelines.progress import progress_bar

    out = Path(args.output)
    _check_engine_output(out)
    fmt = None if args.format == "auto" else args.format
    base = [read_labels(path, fmt=fmt, individual=args.individual).to_support() for path in args.base]
    config = _adapt_config(args)
    bar = progress_bar(config.fg_steps, "foreground prompt", "step")

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.update(1)

    try:
        prompt, result = pretrain_foreground(base, args.model, config, device=args.device, dtype=args.dtype,
                                             progress=progress)
    finally:
        bar.close()
    info = result["info"]
    save_foreground(out, prompt, result["model"], result["config"], info)
    first, last = info["foreground_loss"] or (float("nan"), float("nan"))
    print(f"pre-trained the foreground prompt on {info['frames']} frames of {info['base_sets']} base set(s) "
          f"({info['views']} views) in {info['seconds']:.1f} s; loss {first:.4g} → {last:.4g}")
    if info.get("skipped_steps"):
        logger.warning("skipped %d optimisation steps whose float16 gradients overflowed; consider --dtype float32 "
                       "or bfloat16", info["skipped_steps"])
    print(f"wrote {out} (use it with 'ppmtrack adapt SUPPORT --foreground {out}')")
    return 0


# ---- browser pages and plots -------------------------------------------------------------------------------

def _keypoint_options(args) -> tuple[list[str] | None, list, list]:
    """Keypoint names, skeleton and flip pairs from --from FILE or --keypoints/--skeleton (None: none given)."""
    from ppmtrack.pipelines.web.sessions import keypoints_from

    if args.keypoints_from:
        if args.keypoints:
            raise UsageError("give --from or --keypoints, not both")
        return keypoints_from(args.keypoints_from)
    names = [n.strip() for n in args.keypoints.split(",") if n.strip()] if args.keypoints else None
    skeleton = []
    for edge in (args.skeleton.split(",") if args.skeleton else []):
        pair = [n.strip() for n in edge.split("-")]
        if len(pair) != 2 or not names or not all(n in names for n in pair):
            raise UsageError(f"--skeleton edge {edge!r} must be NAME-NAME of two --keypoints")
        skeleton.append(tuple(pair))
    return names, skeleton, []


def run_label(args) -> int:
    """``ppmtrack label``: the labelling page in the browser."""
    from ppmtrack.pipelines.outputs import prepare_output_dir
    from ppmtrack.pipelines.web.app import require_ui, serve
    from ppmtrack.pipelines.web.sessions import LabelSession

    videos = [Path(v) for v in args.videos]
    if args.output is None:  # `ppmtrack label proposed.json`: open an annotation (e.g. from discover) in place
        if len(videos) != 1 or videos[0].suffix.lower() != ".json":
            raise UsageError("name the annotation file to write with -o OUT.json (or open one: ppmtrack label "
                             "FILE.json)")
        if not videos[0].is_file():
            raise UsageError(f"{videos[0]}: no such annotation file")
        args.output, videos = str(videos[0]), []
    require_ui()
    names, skeleton, flip_pairs = _keypoint_options(args)
    prepare_output_dir(Path(args.output).parent)
    session = LabelSession(videos, Path(args.output), names, skeleton, flip_pairs)
    if args.frames_from:
        session.suggested = _outlier_frames_of(args.frames_from, session.videos)
    if args.model:  # label propagation: "Suggest" places keypoints from the labelled frames
        from ppmtrack.pipelines.propagate import LabelProposer

        session.proposer = LabelProposer(args.model)
    serve(session, host=args.host, port=args.port)
    return 0


def _outlier_frames_of(summary_path: str, videos) -> dict[int, list[int]]:
    """``label --frames-from``: video id → the outlier frames a run's summary lists (its ``detector``)."""
    import json

    try:
        doc = json.loads(Path(summary_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{summary_path}: cannot read the run's summary ({exc})") from None
    frames = [int(f["frame"]) for f in ((doc.get("detector") or {}).get("outlier_frames") or [])]
    if not frames:
        raise UsageError(f"{summary_path}: lists no outlier frames (a run of this version with optical flow on a "
                         "file lists them in 'detector')")
    source = Path(str((doc.get("input") or {}).get("path") or (doc.get("input") or {}).get("source") or ""))
    matching = [i for i, v in enumerate(videos) if Path(v.path).stem == source.stem]
    if not matching:
        raise UsageError(f"{summary_path} is the run of {source.name}, not of any video named here "
                         f"({', '.join(Path(v.path).name for v in videos)})")
    print(f"{len(frames)} outlier frames of {source.name} to label first: {', '.join(map(str, sorted(frames)))}")
    return {matching[0]: sorted(frames)}


def run_review(args) -> int:
    """``ppmtrack review``: play a run's tracks in the browser and correct frames into a support file."""
    from ppmtrack.pipelines.outputs import prepare_output_dir
    from ppmtrack.pipelines.web.app import require_ui, serve
    from ppmtrack.pipelines.web.sessions import ReviewSession

    require_ui()
    if args.output:
        prepare_output_dir(Path(args.output).parent)
    session = ReviewSession(Path(args.results), video=args.video and Path(args.video),
                            support=args.support and Path(args.support), output=args.output and Path(args.output))
    serve(session, host=args.host, port=args.port)
    return 0


def run_identities(args) -> int:
    """``ppmtrack identities``: candidate swap points and identity corrections (pipelines/corrections.py)."""
    from ppmtrack.pipelines.corrections import Corrections
    from ppmtrack.pipelines.web.sessions import find_tracks_csv

    results = Path(args.results)
    csv = results if results.is_file() else next(iter(sorted(p for p in results.glob("*.csv")
                                                              if ".corrected" not in p.name
                                                              and _is_multi_csv(p))), None)
    if csv is None:
        csv = find_tracks_csv(results)  # its error names what is there
    fix = Corrections(csv)
    op = None
    if args.swap:
        op = {"op": "swap", "animal": args.swap[0], "other": args.swap[1]}
    elif args.new:
        if len(args.new) > 2:
            raise UsageError("--new takes the animal and, optionally, the new animal's name")
        op = {"op": "new", "animal": args.new[0], "other": args.new[1] if len(args.new) > 1 else None}
    elif args.same_as:
        op = {"op": "same_as", "animal": args.same_as[0], "other": args.same_as[1]}
    if op is not None:
        if args.from_frame is None:
            raise UsageError("a correction needs --from N (its first frame)")
        written = fix.add({**op, "from_frame": args.from_frame})
    elif args.undo:
        written = fix.undo()
    elif args.redo:
        written = fix.redo()
    else:
        written = None
    for c in fix.doc["corrections"]:
        other = f" {c['other']}" if c.get("other") else ""
        print(f"correction: {c['op']} {c['animal']}{other} from frame {c['from_frame']}")
    if written is not None:
        print("wrote " + ", ".join(written) if written else "no correction left: corrected files removed")
    candidates = fix.candidates(args.candidates)
    print(f"{len(candidates)} candidate swap points (check these frames first):")
    for c in candidates:
        print(f"  frame {c['frame']:>6}  {' / '.join(c['animals']):<24} {c['reason']:<9} score {c['score']:.2f}")
    return 0


def _is_multi_csv(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return ",individual," in f.readline()


def run_plot(args) -> int:
    """``ppmtrack plot``: PNG plots of a tracks CSV."""
    from ppmtrack.pipelines.plots import write_plots

    written = write_plots(args.tracks, out_dir=args.output, video=args.video)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _server_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; anything but loopback requires the random token the URL "
                            "carries (for a remote machine prefer an SSH tunnel: ssh -L 8765:127.0.0.1:8765 HOST)")
    group.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free port)")
    return parent


def _add_browser_and_plot_commands(commands, debug) -> None:
    server = _server_options()
    label = commands.add_parser(
        "label", parents=[server, debug], formatter_class=_HelpFormatter,
        help="label keypoints on video frames in the browser",
        description="Open a page in the browser to label keypoints on frames of the videos: it proposes frames "
                    "that span the videos' variety (k-means), saves the annotation file (-o) after every "
                    "change and reopens it to continue. Needs pip install 'ppmtrack[ui]'. See docs/ui.md.",
        epilog="examples:\n  ppmtrack label session1.mp4 session2.mp4 -o support.json --keypoints nose,neck,tail "
               "--skeleton nose-neck,neck-tail\n  ppmtrack label session1.mp4 -o support.json --from "
               "dlc-project/config.yaml\n  ppmtrack label session1.mp4 -o support.json    # continue an existing "
               "file\n  ppmtrack label proposed.json    # open a proposal of 'ppmtrack discover' to name and correct "
               "its points\n",
    )
    label.add_argument("videos", nargs="+", metavar="VIDEO",
                       help="video files to label, or one annotation file to open and edit in place (e.g. the "
                            "proposal of 'ppmtrack discover')")
    label.add_argument("-o", "--output", metavar="OUT.json",
                       help="annotation file to write (continued if it exists); needed unless an annotation file "
                            "is opened")
    label.add_argument("--keypoints", metavar="A,B,C", help="keypoint names (or define them in the page)")
    label.add_argument("--skeleton", metavar="A-B,B-C", help="skeleton edges between --keypoints")
    label.add_argument("--from", dest="keypoints_from", metavar="FILE",
                       help="take keypoint names and skeleton from an annotation, DeepLabCut/SLEAP/COCO labels "
                            "or a DeepLabCut config.yaml")
    label.add_argument("--frames-from", dest="frames_from", metavar="SUMMARY",
                       help="propose the outlier frames a tracking run found (results/STEM.summary.json, "
                            "'detector'): where detection and motion disagree most — label them, adapt, track again")
    label.add_argument("--model", metavar="ID_OR_PATH",
                       help="diffusion model for suggestions: 'Suggest' places every keypoint on other frames from "
                            "the labelled ones (feature correspondence, and optical flow within 5 frames); you "
                            "accept or drag them (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5; loaded on "
                            "first use)")
    label.set_defaults(run=run_label)

    review = commands.add_parser(
        "review", parents=[server, debug], formatter_class=_HelpFormatter,
        help="review and correct tracking results in the browser",
        description="Open a page in the browser that plays the tracked video with its tracks, a confidence "
                    "timeline and a trajectory plot, and lists the lowest-confidence frames and the gaps. "
                    "Corrected frames are added to a support file; re-adapt with the 'ppmtrack adapt' command "
                    "the page shows. Needs pip install 'ppmtrack[ui]'. See docs/ui.md.",
        epilog="examples:\n  ppmtrack review results/\n  ppmtrack review results/session1.csv --video "
               "session1.mp4 --support support.json\n",
    )
    review.add_argument("results", metavar="RESULTS", help="output folder of 'ppmtrack track' or its tracks CSV")
    review.add_argument("--video", help="the tracked video (default: the source named in STEM.summary.json)")
    review.add_argument("--support", metavar="LABELS",
                        help="the support set the engine was adapted on; its frames start the corrected file")
    review.add_argument("-o", "--output", metavar="OUT.json",
                        help="support file that corrected frames are added to (default: RESULTS/STEM.support.json; "
                             "continued if it exists)")
    review.set_defaults(run=run_review)

    plot = commands.add_parser(
        "plot", parents=[debug], formatter_class=_HelpFormatter, help="plot tracks as PNG images",
        description="Write STEM.trajectories.png (paths over a frame of the video), STEM.confidence.png and "
                    "STEM.speed.png (per keypoint over time) for a tracks CSV. Needs matplotlib "
                    "(pip install 'ppmtrack[plots]').",
        epilog="example:\n  ppmtrack plot results/session1.csv\n",
    )
    plot.add_argument("tracks", metavar="TRACKS_CSV", help="tracks CSV written by 'ppmtrack track'")
    plot.add_argument("-o", "--output", metavar="DIR", help="folder for the PNGs (default: the CSV's folder)")
    plot.add_argument("--video", help="the tracked video (default: the source named in STEM.summary.json)")
    plot.set_defaults(run=run_plot)
    identities = commands.add_parser(
        "identities", parents=[debug], formatter_class=_HelpFormatter,
        help="correct identity swaps of a several-animal run (kept apart from the original CSV, undoable)",
        description="List the frames where identities most likely swapped, and correct them: each correction is "
                    "saved in STEM.corrections.json beside the results and re-exported to STEM.corrected.csv and "
                    "every format the run wrote (dlc, sleap, nwb); the run's own CSV is never changed. "
                    "See docs/multi-animal.md.",
        epilog="examples:\n  ppmtrack identities results/pair.csv                       # candidate swap points\n"
               "  ppmtrack identities results/pair.csv --swap animal1 animal2 --from 99\n"
               "  ppmtrack identities results/pair.csv --new animal2 --from 310\n"
               "  ppmtrack identities results/pair.csv --same-as animal3 animal1 --from 420\n"
               "  ppmtrack identities results/pair.csv --undo\n",
    )
    identities.add_argument("results", metavar="RESULTS", help="tracks CSV of 'ppmtrack track --animals' (or its "
                                                               "folder)")
    what = identities.add_mutually_exclusive_group()
    what.add_argument("--swap", nargs=2, metavar=("A", "B"), help="A and B exchange identities from --from on")
    what.add_argument("--new", nargs="+", metavar=("A", "NAME"),
                      help="A from --from on is a new animal (named NAME, default the next animalN)")
    what.add_argument("--same-as", nargs=2, metavar=("A", "B"), dest="same_as",
                      help="A from --from on is the same animal as B (B takes A's frames, A is empty there)")
    what.add_argument("--undo", action="store_true", help="undo the last correction")
    what.add_argument("--redo", action="store_true", help="redo the last undone correction")
    identities.add_argument("--from", type=int, dest="from_frame", metavar="N", help="first frame of the correction")
    identities.add_argument("--candidates", type=int, default=15, metavar="N",
                            help="how many candidate swap points to list")
    identities.set_defaults(run=run_identities)


# ---- the parser -------------------------------------------------------------------------------------------

MAIN_EXAMPLES = """\
examples:
  ppmtrack adapt support.json -o lizard.engine
  ppmtrack track session1.mp4 --engine lizard.engine -o results/
  ppmtrack track rtsp://192.168.1.20/stream1 --engine lizard.engine -o live/ --no-video
  ppmtrack eval results/session1.csv truth.json
  ppmtrack convert-labels labeled-data/session1/CollectedData_Alice.csv -o support.json
  ppmtrack label session1.mp4 -o support.json --keypoints nose,neck,tail     # label in the browser
  ppmtrack review results/                                                   # review and correct
  ppmtrack plot results/session1.csv

Run 'ppmtrack COMMAND --help' for a command's options. Documentation: docs/cli.md.
"""
ADAPT_EXAMPLES = """\
examples:
  ppmtrack adapt support.json -o lizard.engine
  ppmtrack adapt labels.v001.slp --individual female -o mouse.engine --steps 300
  ppmtrack adapt samples/support.json --model tiny -o test.engine   # untrained offline test model

Writes the engine file (-o) and prints the loss at the start and end of adaptation, the time taken and
the pixel error of each keypoint on the support frames themselves (a low error there is necessary, not
sufficient: check a few tracked frames too).
"""
TRACK_EXAMPLES = """\
examples:
  ppmtrack track session1.mp4 --engine lizard.engine -o results/
  ppmtrack track session1.mp4 --support support.json -o results/            # adapt first, then track
  ppmtrack track session1.mp4 --engine lizard.engine -o results/ --start 300 --stop 1200 --stride 2
  ppmtrack track session1.mp4 --engine lizard.engine -o results/ --output-format csv,dlc,nwb
  ppmtrack track rtsp://user:pw@10.0.0.5:554/live --engine lizard.engine -o live/
  ppmtrack track videos/ --videotype .mp4,.avi --recursive --engine lizard.engine -o results/
  ppmtrack track 'day*/cam1.mp4' sessions.txt --engine lizard.engine -o results/ --devices cuda:0,cuda:1
  ppmtrack track videos/ --engine lizard.engine -o /shared/results/ --ray auto
  ppmtrack track rtsp://cam1/live rtsp://cam2/live --engine lizard.engine -o live/ --no-video

Writes DIR/STEM.csv (tracks), DIR/STEM.mp4 (annotated video) and DIR/STEM.summary.json, where STEM is the
video's file name without extension, or for a URL its host, port and path joined by '_'
(rtsp://user:pw@10.0.0.5:554/live/cam1 -> 10.0.0.5_554_live_cam1). Ctrl-C stops cleanly: every output is
closed and valid and the summary says "interrupted" (exit status 130).

Never overwritten: inputs (if STEM.mp4 would be the input video, the annotated video is STEM.ppmtrack.mp4)
and complete results (a video with complete results of the same engine is skipped; --overwrite redoes it).
Two inputs with one file name get distinct stems (day2_cam1, cam1_mkv). Several inputs make a batch: a
failing video is recorded and the others go on; DIR/batch_summary.csv and .json list every video, and the
exit status is 2 if any failed.
"""


def _adapt_options(with_defaults: bool) -> argparse.ArgumentParser:
    """Options of few-shot adaptation, shared by ``adapt`` and ``track --support``."""
    from ppmtrack.engine import DEFAULT_MODEL, AdaptConfig

    base = AdaptConfig()
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("adaptation")
    group.add_argument("--format", choices=LABEL_FORMAT_CHOICES, default="auto",
                       help="format of the support labels")
    group.add_argument("--individual", metavar="NAME",
                       help="the animal to read from a multi-animal DeepLabCut or SLEAP file")
    if with_defaults:
        group.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_PATH",
                           help="diffusion model: a Hugging Face id, a local diffusers folder, or 'tiny' (an "
                                "untrained model for offline tests)")
    group.add_argument("--steps", type=int,
                       help=f"keypoint prompt optimisation steps (default: chosen by --validate among "
                            f"{base.steps // 2} and {base.steps}; {base.steps} without validation)")
    group.add_argument("--lr", type=float,
                       help="keypoint prompt learning rate (default: chosen by --validate from the model family's "
                            "grid; without validation the family's rate: 5e-4 for Stable Diffusion (the PPM "
                            "paper's), 0.1 for the tiny test model; 'ppmtrack info' shows which applied)")
    group.add_argument("--fg-steps", type=int, dest="fg_steps",
                       help=f"at most this many foreground prompt steps; it stops earlier when its loss stops "
                            f"improving (default: {base.fg_steps})")
    group.add_argument("--validate", choices=("auto", "off"), default="auto",
                       help="estimate held-out accuracy (leave-one-frame-out; one frame: augmented views) and "
                            "choose --lr/--steps among a small grid with short runs, then train on all frames; "
                            "auto: when it costs at most 2x the keypoint training (docs/adaptation.md)")
    group.add_argument("--fg-lr", type=float, dest="fg_lr",
                       help=f"foreground prompt learning rate (default: {base.fg_lr:g})")
    group.add_argument("--loss", choices=("ce", "mse"),
                       help="keypoint loss: ce (softmax cross-entropy + map MSE) or mse "
                            f"(default: {base.loss})")
    group.add_argument("--views-per-frame", type=int, dest="views_per_frame",
                       help=f"augmented views per support frame (default: {base.views_per_frame})")
    group.add_argument("--crop-views", type=int, dest="crop_views", metavar="N",
                       help="also train on N crops of each support frame around its labelled animal, jittered in "
                            "scale and position, as 'track --crop auto' shows it "
                            f"(default: {base.crop.views_per_frame})")
    group.add_argument("--no-augment", action="store_true",
                       help="no augmentation: one view per support frame (overrides --views-per-frame)")
    group.add_argument("--foreground", metavar="FILE",
                       help="start from a foreground prompt pre-trained on a base set ('ppmtrack "
                            "pretrain-foreground'); default: fit it on the support frames")
    group.add_argument("--init", choices=("foreground", "names", "auto"), default="foreground",
                       help="where the keypoint prompts start: foreground (the foreground prompt, PPM's start), "
                            "names ('the {keypoint} of a {species}' through the model's CLIP text encoder; "
                            "--species, default 'animal'), or auto (with validation: both starts validated, the "
                            "lower held-out error wins — doubles the validation time). Stored in the engine "
                            "(docs/adaptation.md)")
    group.add_argument("--flip", action="store_true",
                       help="also train on horizontally mirrored views, swapping the annotation's flip_pairs; "
                            "only right when mirrored left and right parts look alike (e.g. top-down views)")
    group.add_argument("--resolution", type=int,
                       help="engine input size, a multiple of 64 (default: the model's own, 512 for SD 1.5)")
    group.add_argument("--layers",
                       help="cross-attention layers used: up, down, mid, all or names "
                            f"(default: {base.layers})")
    group.add_argument("--seed", type=int,
                       help=f"seed of initialisation and augmentation (default: {base.seed})")
    return parent


def _device_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--device", help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available)")
    parent.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                        help="model precision (default: float16 on GPU, float32 on CPU)")
    parent.add_argument("--threads", type=int, metavar="N",
                        help="PyTorch intra-op CPU threads (default: PyTorch's, one per core); fewer can be "
                             "faster when decoding and writing share a few cores")
    return parent


def _debug_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug messages")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The ``ppmtrack`` argument parser with its subcommands."""
    from ppmtrack.pipelines.crops import CROP_MODES
    from ppmtrack.pipelines.io.formats import OUTPUT_FORMATS
    from ppmtrack.pipelines.sources import STALL_TIMEOUT_S
    from ppmtrack.pipelines.track import FLOW_MODES, SMOOTH_MODES
    from ppmtrack.tracker import SmoothingParams
    from ppmtrack.tracker.identity import MOTION_MODELS, IdentityParams

    parser = argparse.ArgumentParser(
        prog="ppmtrack", formatter_class=_HelpFormatter, epilog=MAIN_EXAMPLES,
        description="Few-shot keypoint tracking in videos with Prompt Pose Matching on a frozen diffusion "
                    "model.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    debug, device = _debug_option(), _device_options()

    adapt = commands.add_parser(
        "adapt", parents=[_adapt_options(with_defaults=True), device, debug], formatter_class=_HelpFormatter,
        help="adapt an engine to your animal from a few labelled frames", epilog=ADAPT_EXAMPLES,
        description="Learn one prompt per keypoint from a few labelled support frames and save the engine.",
    )
    adapt.add_argument("support", metavar="SUPPORT",
                       help="labelled frames: ppmtrack JSON, DeepLabCut CSV/H5 or labeled-data folder, SLEAP "
                            ".slp, or COCO keypoints JSON")
    adapt.add_argument("-o", "--output", required=True, metavar="ENGINE", help="engine file to write")
    adapt.add_argument("--species", help="the animal's name for --init names|auto prompts ('the nose of a "
                                         "{species}'; default 'animal')")
    adapt.set_defaults(run=run_adapt)
    _add_info_command(commands, debug)

    track = commands.add_parser(
        "track", parents=[_adapt_options(with_defaults=False), device, debug], formatter_class=_HelpFormatter,
        help="track a video file or live stream", epilog=TRACK_EXAMPLES,
        description="Track keypoints through a video file or a live stream (rtsp, http(s), udp, tcp, srt).",
    )
    track.add_argument("videos", nargs="+", metavar="VIDEO_OR_URL",
                       help="video files, folders of videos, quoted globs ('sessions/*/cam1.mp4'), text files "
                            "listing videos (.txt), or stream URLs (several URLs: tracked at once)")
    which = track.add_mutually_exclusive_group(required=True)
    which.add_argument("--engine", metavar="ENGINE",
                       help="adapted engine file (from 'ppmtrack adapt'), or an .onnx export of one")
    which.add_argument("--support", metavar="SUPPORT",
                       help="labelled frames to adapt on first (the engine is saved to DIR/<support>.engine)")
    track.add_argument("--model", metavar="ID_OR_PATH",
                       help="diffusion model (default: the engine's own; with --support "
                            "stable-diffusion-v1-5/stable-diffusion-v1-5; 'tiny' for offline tests)")
    track.add_argument("-o", "--output", required=True, metavar="DIR",
                       help="output folder (created if needed)")
    track.add_argument("--batch-size", type=int, default=8, dest="batch_size",
                       help="frames per engine call (live streams take what is waiting, up to this many)")
    track.add_argument("--start", type=int, default=0, help="first frame index")
    track.add_argument("--stop", type=int, help="stop before this frame index (default: the end)")
    track.add_argument("--stride", type=int, default=1, help="track every N-th frame")
    track.add_argument("--no-video", action="store_true", dest="no_video",
                       help="do not write the annotated video")
    track.add_argument("--output-format", default="csv", dest="output_format", metavar="FORMATS",
                       help=f"comma-separated, among {','.join(OUTPUT_FORMATS)} (csv is always written)")
    track.add_argument("--with-raw", action="store_true", dest="with_raw",
                       help="also write the engine's raw (unsmoothed) positions in the dlc/sleap/nwb formats, as "
                            "a second file: STEM<scorer>.raw.h5/.csv, STEM.raw.analysis.h5, STEM.raw.nwb")
    track.add_argument("--subject-id", dest="subject_id", metavar="ID",
                       help="the animal's ID for the NWB Subject and individual name (default: individual_0)")
    track.add_argument("--species", help="the NWB Subject's species, e.g. 'Mus musculus'")
    track.add_argument("--min-confidence", type=_fraction, dest="min_confidence",
                       help="measurements below this confidence are ignored by the smoother and drawn hollow "
                            f"(default: {SmoothingParams().min_confidence:g}; the video's hollow cut-off then "
                            "is a DeepLabCut project's pcutoff when the support came from one)")
    track.add_argument("--smooth", choices=SMOOTH_MODES, default="auto",
                       help="auto: forward-backward (RTS) for files, causal for streams")
    track.add_argument("--flow", choices=FLOW_MODES, default="auto",
                       help="optical flow between frames fused with the detections in the keypoint filter "
                            "(docs/smoothing.md); auto: on (Lucas-Kanade), off: detections only")
    track.add_argument("--detection-noise", type=_detection_noise, default="auto", dest="detection_noise",
                       metavar="auto|PX",
                       help="how far the keypoint filter trusts the engine's detections, as their error in pixels at "
                            "confidence 1; auto: each keypoint's held-out error that 'adapt' measured (printed by "
                            "'ppmtrack info ENGINE'), 2 px for an engine adapted without validation")
    track.add_argument("--detector", choices=("ppm", "features", "both"), default="ppm",
                       help="the measurement of each keypoint: ppm (the keypoint prompts' maps), features (the "
                            "correspondence of the keypoint's diffusion features with the support frames', from the "
                            "same forward), both (PPM, replaced by the features where they disagree and the features "
                            "are surer); docs/points.md has the measurement behind the default")
    track.add_argument("--crop", choices=CROP_MODES, default="auto",
                       help="on: once the animal is found, the engine sees a square crop around where it is "
                            "expected (it fills the engine's input), and the whole frame again when the animal is "
                            "lost (docs/cli.md, 'Animal-centred crops'); off: always the whole frame; auto: on when "
                            "the engine was adapted on crops ('adapt --crop-views N'), else off")
    track.add_argument("--crop-size", type=int, dest="crop_size", metavar="N",
                       help="side the crops are resized to, a multiple of 64 (default: the engine's resolution; "
                            "smaller is faster, see docs/performance.md)")
    track.add_argument("--drop-policy", choices=("drop_oldest", "block"), dest="drop_policy",
                       help="when frames arrive faster than they are tracked: drop the oldest waiting frame "
                            "or make decoding wait (default: drop_oldest for streams, block for files; a "
                            f"stream that blocks longer than {STALL_TIMEOUT_S:g} s may be reported lost)")
    track.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                       help="torch: the engine file with PyTorch; onnx: an 'export-onnx' file with onnxruntime "
                            "(CUDA/TensorRT providers when onnxruntime-gpu is installed); auto: by file ending")
    track.add_argument("--rtsp-transport", choices=("tcp", "udp"), dest="rtsp_transport",
                       help="RTSP transport (default: tcp; some cameras and relays only serve udp)")
    track.add_argument("--max-reconnect-s", type=float, default=60.0, dest="max_reconnect_s",
                       help="give up on a dropped stream after this many seconds without success")
    several = track.add_argument_group("several animals (docs/multi-animal.md)")
    several.add_argument("--animals", metavar="N|auto",
                         help="track N animals with identities (or 'auto': as many as the foreground shows, up to "
                              "--max-animals); the CSV gets an 'individual' column")
    several.add_argument("--max-animals", type=int, default=4, dest="max_animals",
                         help="with --animals auto: most animals at once")
    several.add_argument("--max-absent-s", type=float, default=IdentityParams().max_absent_s, dest="max_absent_s",
                         help="an animal out of view keeps its identity this long for re-identification by "
                              "appearance")
    several.add_argument("--animal-crops", action="store_true", dest="animal_crops",
                         help="read each animal's keypoints from its own crop (a square around its foreground "
                              "region; all crops of a batch in one extra forward) instead of the whole frame")
    several.add_argument("--boxes", metavar="SOURCE",
                         help="read each animal from the crop of its box instead of splitting the foreground: a "
                              "boxes .csv/.json (frame,[id,]x0,y0,x1,y1[,score]), SLEAP .slp/analysis .h5 or "
                              "DeepLabCut multi-animal .h5/.csv tracks (boxes around their keypoints), or an ONNX "
                              "detector .onnx (contract in docs/multi-animal.md)")
    several.add_argument("--box-ids", choices=("keep", "ignore"), default="keep", dest="box_ids",
                         help="with --boxes that carry ids: keep (the source's first N ids are the identities) or "
                              "ignore (identities by position and appearance)")
    several.add_argument("--box-min-score", type=float, default=0.0, dest="box_min_score",
                         help="with --boxes: drop boxes scored below this")
    several.add_argument("--identity-motion", choices=MOTION_MODELS, default="kalman", dest="identity_motion",
                         help="kalman: predicted positions plus appearance; nearest: nearest last position only "
                              "(baseline)")
    speed = track.add_argument_group("speed (docs/performance.md; torch backend)")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet blocks and encoder (falls back to eager with a warning)")
    speed.add_argument("--cuda-graphs", action="store_true", dest="cuda_graphs",
                       help="replay the UNet forward as a CUDA graph per batch shape (CUDA only)")
    speed.add_argument("--channels-last", action="store_true", dest="channels_last",
                       help="NHWC memory layout for convolutions")
    speed.add_argument("--encoder", default="vae",
                       help="image encoder: vae (the model's), taesd (AutoencoderTiny weights from the hub or a "
                            "folder: faster, slightly different maps)")
    speed.add_argument("--reuse-every", type=int, default=1, dest="reuse_every", metavar="K",
                       help="recompute the deep UNet features every K frames only (DeepCache-style; 1 = off)")
    track.add_argument("--resume", action="store_true",
                       help="continue an interrupted, failed or killed run of this file in DIR where it stopped "
                            "(same engine and frame selection), with the tracks an uninterrupted run would give "
                            "(from its run state DIR/STEM.state/); with several videos, each unfinished one is "
                            "resumed and the others are tracked")
    track.add_argument("--plots", action="store_true",
                       help="at the end, write PNG plots (trajectories, confidence, speed; see 'ppmtrack plot')")
    many = track.add_argument_group("many videos and clusters (docs/cli.md, docs/cluster.md)")
    many.add_argument("--videotype", metavar="EXTS",
                      help="extensions of the videos taken from folders, e.g. .mp4,.avi (default: common "
                           "video extensions)")
    many.add_argument("--recursive", action="store_true", help="also take videos from sub-folders")
    many.add_argument("--overwrite", action="store_true",
                      help="redo videos whose complete results exist (the whole earlier set of files of each is "
                           "removed); default: skip them")
    many.add_argument("--devices", metavar="LIST",
                      help="one worker per device, videos from one queue: e.g. cuda:0,cuda:1, or 'all'")
    many.add_argument("--ray", metavar="ADDRESS",
                      help="track the videos on a Ray cluster: auto, ray://HOST:10001 or local "
                           "(pip install 'ppmtrack[cluster]')")
    many.add_argument("--ray-workers", type=int, dest="ray_workers", metavar="N",
                      help="Ray actors (default: one per GPU of the cluster, else one per CPU)")
    track.add_argument("-q", "--quiet", action="store_true", help="no progress bars or status lines")
    track.set_defaults(run=run_track)
    from ppmtrack.pipelines.points import add_points_command

    add_points_command(commands, [device, debug], _HelpFormatter)

    evaluation = commands.add_parser(
        "eval", parents=[debug], formatter_class=_HelpFormatter,
        help="score a tracks CSV against ground truth",
        description="Print PCK@0.05/0.1/0.2 and the pixel error of tracked keypoints against labelled "
                    "frames, fused (smoothed) and detection-only (the engine's raw detections). The engine's "
                    "support frames in this video (from the run's summary and engine file) are not scored: "
                    "the tracks are pinned there, so they would measure the labels, not the tracker.",
        epilog="examples:\n  ppmtrack eval results/sample.csv samples/truth.json\n"
               "  ppmtrack eval results/reachingvideo1.csv labeled-data/reachingvideo1/CollectedData_Mackenzie.csv\n"
               "  ppmtrack eval results/clip.csv labels.v001.slp --truth-video clip\n",
    )
    evaluation.add_argument("tracks", metavar="TRACKS_CSV", help="tracks CSV written by 'ppmtrack track'")
    evaluation.add_argument("truth", metavar="TRUTH",
                            help="labels of frames of the tracked video: ppmtrack JSON, DeepLabCut CollectedData "
                                 "CSV/H5 or labeled-data folder (imgNNNN.png = frame NNNN), SLEAP .slp (user "
                                 "instances) or COCO keypoints JSON (images named after their frame number)")
    evaluation.add_argument("--format", choices=LABEL_FORMAT_CHOICES, default="auto", help="format of TRUTH")
    evaluation.add_argument("--individual", metavar="NAME",
                            help="the animal to read from a multi-animal DeepLabCut or SLEAP file")
    evaluation.add_argument("--truth-video", dest="truth_video", metavar="NAME",
                            help="score only the truth frames of this video (its file name or stem, or the "
                                 "DeepLabCut labeled-data folder name); needed when TRUTH labels several videos")
    evaluation.add_argument("--tracked-span", action="store_true", dest="tracked_span",
                            help="leave out truth frames before the first or after the last tracked frame "
                                 "(tracks of part of a video); by default they count as not tracked")
    evaluation.add_argument("--raw", action="store_true",
                            help="score the engine's raw measurements instead of the smoothed positions (by "
                                 "default both are printed: fused PCK and, beside it, detection-only PCK)")
    evaluation.add_argument("--include-support", action="store_true", dest="include_support",
                            help="also score the engine's support frames (by default they are left out: the engine "
                                 "was trained on them and the tracks are anchored there)")
    evaluation.add_argument("--summary", metavar="PATH",
                            help="the run's summary, for its support frames (default: STEM.summary.json beside "
                                 "TRACKS_CSV, when there)")
    evaluation.add_argument("--engine", metavar="PATH",
                            help="also leave out the support frames this engine file records for the tracked video")
    evaluation.set_defaults(run=run_eval)

    convert = commands.add_parser(
        "convert-labels", parents=[debug], formatter_class=_HelpFormatter,
        help="convert DeepLabCut/SLEAP/COCO labels to a ppmtrack annotation file",
        description="Read labels in any supported format and write them as a ppmtrack annotation JSON.",
        epilog="example:\n  ppmtrack convert-labels labels.v001.slp --individual female -o support.json\n",
    )
    convert.add_argument("input", metavar="INPUT", help="labels file or DeepLabCut labeled-data folder")
    convert.add_argument("-o", "--output", required=True, metavar="OUT.json", help="annotation file to write")
    convert.add_argument("--format", choices=LABEL_FORMAT_CHOICES, default="auto", help="format of INPUT")
    convert.add_argument("--individual", metavar="NAME",
                         help="the animal to read from a multi-animal DeepLabCut or SLEAP file")
    convert.set_defaults(run=run_convert_labels)
    _add_browser_and_plot_commands(commands, debug)

    pretrain = commands.add_parser(
        "pretrain-foreground", parents=[_adapt_options(with_defaults=True), device, debug],
        formatter_class=_HelpFormatter, help="pre-train a reusable foreground prompt on a base set",
        description="Fit the foreground prompt P_f on annotated images of other animals (a base set; PPM "
                    "3.1.3). Their keypoints only build FARA pseudo masks, so names may differ between files. "
                    "'ppmtrack adapt --foreground FILE' then starts from it instead of fitting P_f on the "
                    "support frames. Uses --fg-steps, --resolution, --layers, --views-per-frame.",
        epilog="example:\n  ppmtrack pretrain-foreground mice.json rats/CollectedData_Bo.csv -o rodents.fg "
               "--model ./sd15\n",
    )
    pretrain.add_argument("base", nargs="+", metavar="BASE_LABELS", help="annotation files of the base set")
    pretrain.add_argument("-o", "--output", required=True, metavar="FILE", help="foreground-prompt file to write")
    pretrain.set_defaults(run=run_pretrain_foreground)

    if importlib.util.find_spec("ppmtrack.engine.onnx_export") is not None:
        onnx = commands.add_parser(
            "export-onnx", parents=[debug], formatter_class=_HelpFormatter,
            help="export an adapted engine as an ONNX model",
            description="Export an engine (model and prompts, float32) as an ONNX model for other runtimes.",
            epilog="example:\n  ppmtrack export-onnx lizard.engine -o lizard.onnx\n",
        )
        onnx.add_argument("engine", metavar="ENGINE", help="adapted engine file")
        onnx.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="ONNX file to write")
        onnx.add_argument("--model", metavar="ID_OR_PATH", help="diffusion model (default: the engine's own)")
        onnx.add_argument("--device", help="device used while exporting (default: cpu)")
        onnx.add_argument("--with-maps", action="store_true", dest="with_maps",
                          help="also output the keypoint and foreground maps")
        onnx.add_argument("--opset", type=int, default=17, help="ONNX opset")
        onnx.add_argument("--batch-size", type=int, dest="batch_size",
                          help="fixed batch size (default: dynamic)")
        onnx.set_defaults(run=run_export_onnx)
    from ppmtrack.pipelines.discover import add_discover_command

    add_discover_command(commands, [device, debug], _HelpFormatter)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors the command line prints as one line (exit 2): exactly those meant for users (PpmtrackError).

    Anything else is a bug in ppmtrack or a library and shows its traceback."""
    return (PpmtrackError,)


def _detection_noise(text: str):
    from ppmtrack.pipelines.detection_noise import parse_detection_noise

    try:
        return parse_detection_noise(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} must lie between 0 and 1")
    return value


def _set_threads(threads: int | None) -> None:
    """``--threads``: PyTorch's intra-op thread count for this run."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    """Run the ``ppmtrack`` command line; returns the exit status (0 ok, 2 error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.debug)
    try:
        _set_threads(getattr(args, "threads", None))
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("ppmtrack: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_errors() as exc:
        if args.debug:
            traceback.print_exc()
        from ppmtrack.pipelines.sources import redact

        message = redact(" ".join(str(exc).split()) or type(exc).__name__)
        print(f"ppmtrack: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
