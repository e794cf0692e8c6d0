"""Tracking a batch of videos on a Ray cluster: one actor per GPU (or per CPU worker) keeps the engine loaded.

``ppmtrack track VIDEOS --engine E -o DIR --ray ADDRESS`` (``auto``, ``ray://host:10001`` or ``local``)
plans the batch on the driver exactly as a local batch does (unique stems, complete videos skipped), then
hands each remaining video to the next free :class:`TrackActor`. The engine file travels with the actors'
creation, so only the videos must be readable by the workers (a shared file system or URLs).

Outputs: each video is tracked into a private folder and then *installed* into the output folder: the
earlier set of that stem removed, each file moved in with ``os.replace`` and the summary last, so a video's
outputs are either complete or absent, never half written or duplicated. When the output folder is shared
(the workers see a marker file the driver put there), the worker tracks into ``DIR/.ppmtrack-partial/`` and
installs itself; when it is not, the worker tracks into a local temporary folder and returns the files to the
driver, which installs them. Actors are restarted when their process dies and the video they were tracking
is tracked again from its start (``max_restarts``/``max_task_retries``); partial folders of dead attempts are
removed at the end. Needs the ``cluster`` extra: ``pip install 'ppmtrack[cluster]'``. See docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from ppmtrack.engine.atomic import atomic_path, move_into_place
from ppmtrack.engine.errors import PpmtrackError
from ppmtrack.pipelines.batch import BatchItem, fill_from_summary

logger = logging.getLogger("ppmtrack")

PARTIAL_DIR = ".ppmtrack-partial"
MAX_RESTARTS = 4
"""How often an actor whose process died is restarted (its running video is then tracked again)."""


class ClusterError(PpmtrackError, ConnectionError):
    """Ray is missing, or the cluster cannot be reached."""


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs Ray: pip install 'ppmtrack[cluster]'") from None
    return ray


def connect(address: str, num_cpus: int | None = None):
    """Connect to (``auto``, ``ray://host:port``, ``host:port``) or start (``local``) a Ray cluster."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    kwargs = {"ignore_reinit_error": True, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address!r}: {' '.join(str(exc).split())}") from None
    return ray


def install_outputs(files: dict[str, Path | bytes], doc: dict, spec, out_dir: Path, stem: str, *,
                    write_video: bool) -> dict:
    """Move one video's finished outputs into ``out_dir`` (summary last); return the summary as written.

    ``files`` maps each file name (as written in the private folder) to its path there or its bytes. The
    earlier output set of ``stem`` is removed first (:func:`pipelines.outputs.prepare_output_set`), and
    the summary's ``outputs`` are rewritten to the installed paths.
    """
    from ppmtrack.pipelines.outputs import SUMMARY_SUFFIX, prepare_output_set

    # the driver already refused what must not be replaced (prepare_output_set before submitting)
    final = prepare_output_set(spec, out_dir, stem=stem, write_video=write_video, overwrite=True)
    rename = {f"{stem}.csv": final.csv, f"{stem}.mp4": final.video, f"{stem}{SUMMARY_SUFFIX}": final.summary}
    moved = {}
    for name, content in files.items():
        if name == f"{stem}{SUMMARY_SUFFIX}":
            continue
        target = rename.get(name) or out_dir / name
        _place(content, target)
        moved[name] = target
    outputs = dict(doc.get("outputs") or {})
    outputs["csv"] = str(final.csv)
    outputs["video"] = str(final.video) if outputs.get("video") and final.video else None
    outputs["summary"] = str(final.summary)
    outputs["formats"] = [str(out_dir / Path(p).name) for p in outputs.get("formats") or []]
    doc = {**doc, "outputs": outputs}
    with atomic_path(final.summary) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


def _place(content: Path | bytes, target: Path) -> None:
    if isinstance(content, bytes):
        with atomic_path(target) as tmp:
            tmp.write_bytes(content)
    else:
        move_into_place(content, target)


class TrackActor:
    """A Ray actor holding one loaded engine; :meth:`track` tracks one video and installs or returns it."""

    def __init__(self, engine_bytes: bytes, engine_name: str, load_kwargs: dict):
        import torch

        from ppmtrack.engine import Engine

        if torch.cuda.is_available() and not load_kwargs.get("device"):
            load_kwargs = {**load_kwargs, "device": "cuda"}
        self._dir = Path(tempfile.mkdtemp(prefix="ppmtrack-actor-"))
        path = self._dir / engine_name
        path.write_bytes(engine_bytes)
        self.engine = Engine.load(path, **load_kwargs)

    def pid(self) -> int:
        return os.getpid()

    def track(self, spec, stem: str, out_dir: str, marker: str, batch_id: str, engine_path: str,
              track_kwargs: dict) -> dict:
        """Track ``spec``; install into ``out_dir`` when the worker sees ``marker``, else return the files."""
        from ppmtrack.pipelines.track import track_video

        out_dir_path = Path(out_dir)
        shared = Path(marker).is_file()
        base = out_dir_path / PARTIAL_DIR / batch_id if shared else self._dir
        work = base / f"{stem}-{uuid.uuid4().hex[:8]}"
        work.mkdir(parents=True)
        try:
            summary = track_video(spec, self.engine, work, stem=stem, overwrite=True, progress=False,
                                  engine_path=engine_path, **track_kwargs)
            doc = summary.to_dict()
            files = {p.name: p for p in work.iterdir() if p.is_file()}
            if shared:
                doc = install_outputs(files, doc, spec, out_dir_path, stem,
                                      write_video=track_kwargs.get("write_video", True))
                return {"summary": doc, "installed": True, "pid": os.getpid()}
            return {"summary": doc, "installed": False, "pid": os.getpid(),
                    "files": {name: p.read_bytes() for name, p in files.items()}}
        finally:
            shutil.rmtree(work, ignore_errors=True)


def default_workers(ray) -> tuple[int, dict]:
    """Actors to start and the resources of each: one per GPU of the cluster, else one per CPU."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return gpus, {"num_gpus": 1}
    return max(1, int(resources.get("CPU", 1))), {"num_cpus": 1}


def run_batch_ray(
    items: list[BatchItem],
    out_dir: str | Path,
    engine_path: str | Path,
    address: str = "auto",
    *,
    track_kwargs: dict,
    load_kwargs: dict | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    num_cpus: int | None = None,
    stop_event=None,
) -> list[BatchItem]:
    """Track the items not ``skipped`` on Ray actors; update the items in place and return them.

    Parameters
    ----------
    items
        From :func:`pipelines.batch.plan_batch` (stems assigned, complete videos skipped).
    out_dir
        The output folder (see the module docstring for shared and unshared folders).
    engine_path
        The engine file; its bytes are shipped to the actors.
    address
        ``auto`` (the cluster this machine belongs to), ``ray://host:10001``, ``host:6379`` or ``local``
        (start a cluster of this machine only).
    track_kwargs, load_kwargs
        For :func:`pipelines.track.track_video` and :meth:`engine.Engine.load` (model, device, dtype).
    overwrite
        Replace complete earlier results (else a video with results of another engine fails, as locally).
    workers
        Number of actors (default: one per GPU of the cluster, else one per CPU), at most one per video.
    num_cpus
        CPUs of a ``local`` cluster (default: all).
    stop_event
        When set (Ctrl-C), the running tasks are cancelled and their videos recorded as ``interrupted``; no new
        video starts.
    """
    from ppmtrack.pipelines.outputs import engine_file_identity, prepare_output_dir, prepare_output_set

    out_dir = prepare_output_dir(out_dir).resolve()
    identity = engine_file_identity(engine_path, (load_kwargs or {}).get("model"))
    todo = []
    for item in items:  # refuse here what a local run would refuse; clear the sets that are redone
        if item.status == "skipped":
            continue
        try:
            prepare_output_set(item.spec, out_dir, stem=item.stem, identity=identity, overwrite=overwrite,
                               write_video=track_kwargs.get("write_video", True))
        except (OSError, ValueError) as exc:
            item.status, item.error = "failed", " ".join(str(exc).split())
            continue
        todo.append(item)
    if not todo:
        return items
    ray = connect(address, num_cpus=num_cpus)
    batch_id = uuid.uuid4().hex[:12]
    marker = out_dir / f".ppmtrack-cluster-{batch_id}"
    marker.write_text("output folder of a ppmtrack Ray batch; removed when it ends\n")
    count, resources = default_workers(ray)
    count = min(workers or count, len(todo))
    actor_class = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS, **resources)(TrackActor)
    engine_bytes = Path(engine_path).read_bytes()  # prompts and metadata only: small
    actors = [actor_class.remote(engine_bytes, Path(engine_path).name, dict(load_kwargs or {}))
              for _ in range(count)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="video", file=sys.stderr,
                   desc="videos", dynamic_ncols=True)
    pending: dict = {}
    queue = list(todo)
    idle = list(actors)
    engine_path = str(Path(engine_path).resolve())
    try:
        while queue or pending:
            if stop_event is not None and stop_event.is_set():
                raise KeyboardInterrupt
            while queue and idle:
                item, actor = queue.pop(0), idle.pop(0)
                ref = actor.track.remote(str(item.spec), item.stem, str(out_dir), str(marker), batch_id,
                                         engine_path, track_kwargs)
                pending[ref] = (item, actor)
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            if not done:
                continue
            item, actor = pending.pop(done[0])
            idle.append(actor)
            _collect(ray, done[0], item, out_dir, track_kwargs)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{item.stem}: {item.status}", refresh=True)
    except KeyboardInterrupt:
        for ref, (item, _) in pending.items():
            ray.cancel(ref, force=True)
            item.status = "interrupted"
        if stop_event is None:
            raise
    finally:
        if bar is not None:
            bar.close()
        for actor in actors:
            ray.kill(actor)
        marker.unlink(missing_ok=True)
        shutil.rmtree(out_dir / PARTIAL_DIR / batch_id, ignore_errors=True)
        with contextlib.suppress(OSError):  # other batches may still use it
            (out_dir / PARTIAL_DIR).rmdir()
    return items


def _collect(ray, ref, item: BatchItem, out_dir: Path, track_kwargs: dict) -> None:
    """Record the result of one video's task (installing its files when the worker returned them)."""
    try:
        result = ray.get(ref)
    except Exception as exc:  # the video failed (or every retry of its actor died)
        cause = getattr(exc, "cause", None) or exc
        item.status = "failed"
        item.error = " ".join(str(cause).split()).splitlines()[0] if str(cause) else type(cause).__name__
        logger.error("%s: failed: %s", item.video, item.error)
        return
    doc = result["summary"]
    if not result["installed"]:
        doc = install_outputs(result["files"], doc, item.spec, out_dir, item.stem,
                              write_video=track_kwargs.get("write_video", True))
    item.worker = f"ray pid {result['pid']}"
    item.status = "complete" if doc.get("status") == "complete" else str(doc.get("status"))
    fill_from_summary(item, doc)
