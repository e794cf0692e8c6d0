"""DeepLabCut labelled data in, pose tables out; checked against movement and pandas' reading of DLC files."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from ppmtrack.pipelines.io.dlc import read_dlc, write_dlc
from ppmtrack.pipelines.io.formats import detect_labels_format, read_labels, write_tracks
from ppmtrack.pipelines.labels import LabelsError
from ppmtrack.tracker.track import Tracks

pd = pytest.importorskip("pandas")
pytest.importorskip("tables")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_DLC = (
    SHARED / "data" / "dlc_reaching" / "labeled-data" / "reachingvideo1" / "CollectedData_Mackenzie.csv"
)
NAMES = ["snout", "left_ear", "tail"]


def make_tracks(n_frames=6, first_frame=0, step=1):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (n_frames, len(NAMES), 2))
    xy[2, 1] = np.nan
    return Tracks(
        names=NAMES,
        frame=first_frame + step * np.arange(n_frames),
        time=(first_frame + step * np.arange(n_frames)) / 30.0,
        raw_xy=xy,
        confidence=rng.uniform(0, 1, (n_frames, len(NAMES))),
        xy=xy,
        visible=np.isfinite(xy[..., 0]),
        skeleton=[("snout", "left_ear")],
    )


def make_project(tmp_path, index_style="string", multi=False, size=(40, 30)):
    """A DLC project folder with labeled-data/vid/CollectedData_me.{csv,h5}, two PNGs and config.yaml."""
    folder = tmp_path / "proj" / "labeled-data" / "vid"
    folder.mkdir(parents=True)
    for name in ("img000.png", "img007.png"):
        cv2.imwrite(str(folder / name), np.full((size[1], size[0], 3), 90, np.uint8))
    (tmp_path / "proj" / "config.yaml").write_text(
        "bodyparts:\n- snout\n- left_ear\n- tail\n"
        "skeleton:\n- - snout\n  - tail\n- - bodypart1\n  - bodypart2\n"
    )
    rows = [("labeled-data", "vid", "img000.png"), ("labeled-data", "vid", "img007.png")]
    index = (
        pd.MultiIndex.from_tuples(rows) if index_style == "multi" else pd.Index(["/".join(r) for r in rows])
    )
    values = np.array([[1.5, 2.5, 10.0, 11.0, np.nan, np.nan], [3.0, 4.0, 12.5, 13.5, 20.0, 21.0]])
    if multi:
        columns = pd.MultiIndex.from_product(
            [["me"], ["mouse1", "mouse2"], NAMES, ["x", "y"]],
            names=["scorer", "individuals", "bodyparts", "coords"],
        )
        values = np.concatenate([values, values[::-1] + 1], axis=1)
    else:
        columns = pd.MultiIndex.from_product(
            [["me"], NAMES, ["x", "y"]], names=["scorer", "bodyparts", "coords"]
        )
    df = pd.DataFrame(values, index=index, columns=columns)
    df.to_hdf(folder / "CollectedData_me.h5", key="df_with_missing", mode="w")
    df.to_csv(folder / "CollectedData_me.csv")
    return folder


@pytest.mark.parametrize("index_style", ["string", "multi"])
@pytest.mark.parametrize("suffix", [".csv", ".h5"])
def test_read_dlc_labelled_data_in_both_index_styles_and_file_types(tmp_path, index_style, suffix):
    folder = make_project(tmp_path, index_style)
    labels = read_dlc(folder / f"CollectedData_me{suffix}")
    assert labels.names == NAMES
    assert [f.image.name for f in labels.frames] == ["img000.png", "img007.png"]
    assert all(f.image.is_file() for f in labels.frames)
    np.testing.assert_array_equal(labels.keypoints[0, 2], [np.nan, np.nan])
    np.testing.assert_allclose(labels.keypoints[1], [[3.0, 4.0], [12.5, 13.5], [20.0, 21.0]])
    assert labels.skeleton == [("snout", "tail")]  # the config's template edge naming bodypart1 is dropped
    support = labels.to_support()
    assert len(support.images) == 2 and support.images[0].shape == (30, 40, 3)


def test_read_dlc_folder_and_dispatch(tmp_path):
    folder = make_project(tmp_path)
    assert detect_labels_format(folder) == "dlc"
    assert detect_labels_format(folder / "CollectedData_me.csv") == "dlc"
    assert detect_labels_format(folder / "CollectedData_me.h5") == "dlc"
    assert read_labels(folder).names == NAMES


def test_read_dlc_multi_animal_reads_every_individual_or_the_one_asked_for(tmp_path):
    folder = make_project(tmp_path, multi=True)
    for suffix in (".csv", ".h5"):
        labels = read_dlc(folder / f"CollectedData_me{suffix}")
        assert labels.individuals == ["mouse1", "mouse2"] and labels.instances.shape == (2, 2, 3, 2)
        np.testing.assert_allclose(labels.instances[0, 1], [[4.0, 5.0], [13.5, 14.5], [21.0, 22.0]])
        np.testing.assert_allclose(labels.keypoints[1], [[3.0, 4.0], [12.5, 13.5], [20.0, 21.0]])
        support = labels.to_support()
        assert support.instances().shape == (2, 2, 3, 2)
        np.testing.assert_allclose(support.other_instances[0, 0], [[4.0, 5.0], [13.5, 14.5], [21.0, 22.0]])
        labels = read_labels(folder / f"CollectedData_me{suffix}", individual="mouse2")
        np.testing.assert_allclose(labels.keypoints[0], [[4.0, 5.0], [13.5, 14.5], [21.0, 22.0]])
        with pytest.raises(LabelsError, match="no individual 'rat'"):
            read_dlc(folder / f"CollectedData_me{suffix}", individual="rat")


def test_read_dlc_accepts_files_written_by_movement(tmp_path):
    movement_save = pytest.importorskip("movement.io.save_poses")
    load_poses = pytest.importorskip("movement.io.load_poses")
    folder = make_project(tmp_path)
    ds = load_poses.from_dlc_file(folder / "CollectedData_me.h5")
    movement_save.to_dlc_file(ds, folder / "CollectedData_movement.csv", split_individuals=False)
    labels = read_dlc(folder / "CollectedData_movement.csv", individual="individual_0")
    np.testing.assert_allclose(labels.keypoints[1], [[3.0, 4.0], [12.5, 13.5], [20.0, 21.0]])


@pytest.mark.skipif(not REAL_DLC.is_file(), reason="shared DLC example data not present")
def test_read_real_dlc_reaching_project():
    labels = read_labels(REAL_DLC)
    assert labels.names == ["Hand", "Finger1", "Tongue", "Joystick1", "Joystick2"]
    assert len(labels.frames) == 8 and labels.frames[0].image.name == "img005.png"
    assert np.isnan(labels.keypoints[0, 2]).all()  # Tongue not labelled in img005
    np.testing.assert_allclose(labels.keypoints[0, 0], [185.25173502386923, 610.3622760638572])
    assert labels.skeleton == [("Hand", "Finger1"), ("Joystick1", "Joystick2")]
    support = labels.to_support()
    assert support.images[0].shape == (747, 832, 3)


def test_read_dlc_without_the_scorer_header_row_names_the_file(tmp_path):
    folder = make_project(tmp_path)
    path = folder / "CollectedData_me.csv"
    path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(LabelsError, match=r"CollectedData_me\.csv.*'scorer'"):
        read_dlc(path)


def test_read_dlc_without_the_coords_header_row_names_it(tmp_path):
    folder = make_project(tmp_path)
    path = folder / "CollectedData_me.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    with pytest.raises(LabelsError, match=r"CollectedData_me\.csv: header row 'coords' is missing"):
        read_dlc(path)


def test_read_dlc_bodypart_missing_from_config_is_an_error(tmp_path):
    folder = make_project(tmp_path)
    path = folder / "CollectedData_me.csv"
    path.write_text(path.read_text().replace("tail", "tial"))
    with pytest.raises(
        LabelsError, match=r"CollectedData_me\.csv: bodypart 'tial' is not listed in .*config"
    ):
        read_dlc(path)


def test_read_dlc_short_row_and_bad_number(tmp_path):
    folder = make_project(tmp_path)
    path = folder / "CollectedData_me.csv"
    good = path.read_text()
    path.write_text(good.rstrip("\n").rsplit(",", 1)[0] + "\n")
    with pytest.raises(LabelsError, match=r"CollectedData_me\.csv: line 5 has 6 cells, the header has 7"):
        read_dlc(path)
    path.write_text(good.replace("12.5", "12,5x", 1).replace("12,5x", "abc"))
    with pytest.raises(LabelsError, match=r"CollectedData_me\.csv: row .*img007.png.*'left_ear': x = 'abc'"):
        read_dlc(path)


def test_read_dlc_label_pointing_at_a_missing_image_fails_at_load(tmp_path):
    folder = make_project(tmp_path)
    (folder / "img007.png").unlink()
    labels = read_dlc(folder / "CollectedData_me.csv")
    with pytest.raises(LabelsError, match=r"CollectedData_me\.csv: frame 1: cannot read image .*img007\.png"):
        labels.load_images()


def test_written_dlc_files_read_back_by_movement_and_pandas(tmp_path):
    load_poses = pytest.importorskip("movement.io.load_poses")
    tracks = make_tracks()
    h5, csv = write_dlc(tracks, tmp_path, "clip", engine_name="sd15 ppm")
    assert h5.name == "clipppmtrack_sd15_ppm.h5" and csv.name == "clipppmtrack_sd15_ppm.csv"
    df = pd.read_hdf(h5, key="df_with_missing")
    assert list(df.columns.names) == ["scorer", "bodyparts", "coords"]
    assert set(df.columns.get_level_values("scorer")) == {"ppmtrack_sd15_ppm"}
    assert df.index.dtype.kind == "i" and list(df.index) == list(range(6))
    assert csv.read_text().splitlines()[2].startswith("coords,x,y,likelihood")
    for path in (h5, csv):
        ds = load_poses.from_dlc_file(path, fps=30)
        assert list(ds.keypoints.values) == NAMES and ds.sizes["time"] == len(tracks)
        position = ds.position.values[:, :, :, 0].transpose(0, 2, 1)
        np.testing.assert_allclose(position, tracks.xy, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(ds.confidence.values[:, :, 0], tracks.confidence, rtol=1e-12)
        assert np.isnan(position[2, 1]).all()


def test_written_dlc_rows_are_video_frame_numbers(tmp_path):
    tracks = make_tracks(n_frames=4, first_frame=3, step=2)
    h5, _ = write_tracks(tracks, tmp_path, "clip", ["dlc"], engine_name="e", video_path=None, fps=30)
    df = pd.read_hdf(h5)
    assert len(df) == 10 and np.isnan(df.iloc[:3].to_numpy()).all()
    np.testing.assert_allclose(df.iloc[9].to_numpy().reshape(3, 3)[:, :2], tracks.xy[3])
    assert not list(tmp_path.glob(".*partial*"))


class _RunsCode:
    """Unpickling this creates the marker file: a stand-in for a label file that runs code when opened."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_read_dlc_h5_with_a_pickled_object_column_is_refused_without_running_it(tmp_path):
    folder = make_project(tmp_path)
    marker = tmp_path / "code_ran"
    df = pd.read_csv(folder / "CollectedData_me.csv", header=[0, 1, 2], index_col=0)
    df[("me", "snout", "x")] = df[("me", "snout", "x")].astype(object)
    df.iloc[0, 0] = _RunsCode(marker)
    with pytest.warns(pd.errors.PerformanceWarning):  # pandas pickles the object column
        df.to_hdf(folder / "CollectedData_me.h5", key="df_with_missing", mode="w")
    for read in (read_dlc, read_labels):
        with pytest.raises(LabelsError, match=r"CollectedData_me\.h5: refused: .*Python objects.*\.csv"):
            read(folder / "CollectedData_me.h5")
    with pytest.raises(LabelsError, match="refused"):
        read_labels(folder)  # the folder prefers the .h5
    from ppmtrack.pipelines.cli import main

    h5 = str(folder / "CollectedData_me.h5")
    assert main(["convert-labels", h5, "-o", str(tmp_path / "out.json")]) == 2
    assert main(["adapt", h5, "--model", "tiny", "-o", str(tmp_path / "a.engine")]) == 2
    assert main(["eval", str(tmp_path / "none.csv"), h5]) == 2
    assert not marker.exists() and not (tmp_path / "out.json").exists() and not (tmp_path / "a.engine").exists()


def test_read_dlc_h5_table_format_decodes_its_attributes_without_unpickling(tmp_path):
    """The 'table' format (older DeepLabCut) keeps column labels as pickled attributes: read as plain data only;
    an attribute that would call code is not run (the labels are then missing: a clear error)."""
    import pickle

    h5py = pytest.importorskip("h5py")
    folder = make_project(tmp_path)
    df = pd.read_csv(folder / "CollectedData_me.csv", header=[0, 1, 2], index_col=0)
    path = folder / "CollectedData_me.h5"
    df.to_hdf(path, key="df_with_missing", mode="w", format="table")
    labels = read_dlc(path)
    assert labels.names == NAMES
    np.testing.assert_allclose(labels.keypoints[1], [[3.0, 4.0], [12.5, 13.5], [20.0, 21.0]])
    marker = tmp_path / "code_ran"
    with h5py.File(path, "r+") as f:
        f["df_with_missing/table"].attrs["values_block_0_kind"] = np.bytes_(pickle.dumps(_RunsCode(marker), 0))
    with pytest.raises(LabelsError, match="no column labels"):
        read_dlc(path)
    assert not marker.exists()


def test_literal_pickle_reads_data_and_refuses_code():
    import pickle

    from ppmtrack.pipelines.io.pandas_hdf5 import PickledTableError, literal_pickle

    data = [(1, ("a", "b"), {"k": [None, True, 2.5]}), "é", -(2**70)]
    for protocol in (0, 2, 5):
        assert literal_pickle(pickle.dumps(data, protocol)) == data
    for protocol in (0, 2, 5):
        with pytest.raises(PickledTableError, match="refers to Python code"):
            literal_pickle(pickle.dumps(_RunsCode("/nonexistent/x"), protocol))
