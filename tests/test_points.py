"""``ppmtrack points``: query parsing and checking before the model loads, and a short run read by movement."""

from pathlib import Path

import numpy as np
import pytest

from ppmtrack.engine.errors import UsageError
from ppmtrack.pipelines.points import PointQuery, check_queries, parse_at, read_queries

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "sample.mp4"


def test_at_and_names_make_queries():
    assert parse_at("10:154.4,160.3; 62:120,130") == [PointQuery("point1", 10, 154.4, 160.3),
                                                      PointQuery("point2", 62, 120.0, 130.0)]
    assert [q.name for q in parse_at("0:1,2;0:3,4", "nose,ear")] == ["nose", "ear"]


@pytest.mark.parametrize("at, names, message", [
    ("10:1", None, "expected"),
    ("a:1,2", None, "whole number"),
    ("-1:1,2", None, "whole number"),
    ("1:x,2", None, "not a number"),
    ("1:nan,2", None, "finite"),
    ("1:1,2;2:3,4", "a", "2 points"),
    ("1:1,2;2:3,4", "a,a", "twice"),
    ("1:1,2", "a b", "column name"),
    (" ; ", None, "no point"),
])
def test_bad_at_is_refused(at, names, message):
    with pytest.raises(UsageError, match=message):
        parse_at(at, names)


def test_query_file_with_and_without_header(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text("name,frame,x,y\nnose,10,154.4,160.3\ntail,62,120,130\n")
    assert read_queries(f) == [PointQuery("nose", 10, 154.4, 160.3), PointQuery("tail", 62, 120.0, 130.0)]
    f.write_text("nose,10,1,2\n\nnose,11,3,4\n")
    with pytest.raises(UsageError, match="twice"):
        read_queries(f)
    f.write_text("nose,10,1\n")
    with pytest.raises(UsageError, match="line 1: expected 4 columns"):
        read_queries(f)


def test_points_outside_the_frame_or_past_the_end_are_refused():
    check_queries([PointQuery("a", 199, 319.4, 0.0)], 320, 240, 200)
    with pytest.raises(UsageError, match="outside frame 3"):
        check_queries([PointQuery("a", 3, 320.0, 10.0)], 320, 240, 200)
    with pytest.raises(UsageError, match="past the end"):
        check_queries([PointQuery("a", 200, 1.0, 1.0)], 320, 240, 200)


@pytest.mark.parametrize("extra, message", [
    (["--at", "10:400,10"], "outside frame 10"),
    (["--at", "999:1,1"], "past the end"),
    (["--at", "10:1,1;11:2,2", "--names", "a,a"], "twice"),
    (["--queries", "missing.csv"], "cannot read"),
])
def test_bad_queries_exit_2_with_one_line_before_the_model_loads(tmp_path, capsys, extra, message):
    from ppmtrack.pipelines.cli import main

    # a model that cannot be loaded: the error must be about the queries, found first
    rc = main(["points", str(SAMPLE), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "no-model"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("ppmtrack: error:") and message in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("one_torch_thread")
def test_points_run_is_anchored_on_its_query_frame_and_loads_in_movement(tiny_model, sample_support, tmp_path):
    load_poses = pytest.importorskip("movement.io.load_poses")
    from ppmtrack.pipelines.points import track_points

    names = ["nose", "tail_tip"]
    given = sample_support.instances()[0].reshape(-1, 2)[[0, 5]]  # support frame 10 of the sample
    queries = [PointQuery(n, 10, float(x), float(y)) for n, (x, y) in zip(names, given, strict=True)]
    summary = track_points(SAMPLE, queries, tmp_path, tiny_model, views=2, start=8, stop=13, batch_size=5,
                           write_video=False, output_formats=["csv", "dlc"], progress=False)
    assert summary.status == "complete" and summary.frames_processed == 5
    assert summary.settings["anchor_frames"] == [10]
    h5 = next(Path(p) for p in summary.outputs["formats"] if p.endswith(".h5"))
    ds = load_poses.from_dlc_file(h5, fps=30)
    assert list(ds.keypoints.values) == names and ds.sizes["time"] == 13  # DLC rows are video frame numbers
    xy = ds.position.values[8:, :, :, 0].transpose(0, 2, 1)  # (frames 8-12, keypoint, xy)
    assert np.all(np.isfinite(xy))
    np.testing.assert_allclose(xy[2], given, atol=1.0)  # the query frame keeps the clicked positions
    assert np.all((xy[..., 0] >= -0.5) & (xy[..., 0] <= 319.5) & (xy[..., 1] >= -0.5) & (xy[..., 1] <= 239.5))
