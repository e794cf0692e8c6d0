"""``track --detector``: keypoint descriptors in the engine file and the correspondence beside PPM's maps."""

import numpy as np
import pytest

from ppmtrack.engine.api import Prediction
from ppmtrack.engine.correspond_engine import DetectorEngine, combine, predict_with_features
from ppmtrack.engine.errors import UsageError


def test_both_takes_the_features_only_where_they_disagree_and_are_surer():
    ppm = Prediction(keypoints=np.array([[[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]]]),
                     confidence=np.array([[0.9, 0.2, 0.9]]), sharpness=np.ones((1, 3)))
    xy = np.array([[[12.0, 10.0], [20.0, 20.0], [30.0, 30.0]]])
    conf = np.array([[0.95, 0.8, 0.5]])
    out = combine(ppm, xy, conf, "both", cell_px=4.0)
    np.testing.assert_allclose(out.keypoints[0], [[10, 10], [20, 20], [90, 90]])  # agree / surer / less sure
    np.testing.assert_allclose(out.confidence[0], [0.9, 0.8, 0.9])
    assert combine(ppm, xy, conf, "ppm", 4.0) is ppm
    np.testing.assert_allclose(combine(ppm, xy, conf, "features", 4.0).keypoints, xy)
    with pytest.raises(UsageError):
        combine(ppm, xy, conf, "bogus", 4.0)


@pytest.fixture(scope="module")
def random_prompt_engine(tiny_model, sample_support):
    """An engine with seeded random prompts (no adaptation) and descriptors of the sample's support keypoints."""
    import torch

    from ppmtrack.engine import AdaptConfig, Engine
    from ppmtrack.engine.correspond_engine import describe_support

    generator = torch.Generator().manual_seed(0)
    dim = tiny_model.unet.config.cross_attention_dim
    k = len(sample_support.names)
    engine = Engine(tiny_model, sample_support.names, torch.randn(k, dim, generator=generator),
                    torch.randn(dim, generator=generator), AdaptConfig(resolution=256))
    engine.keypoint_descriptors = describe_support(engine, sample_support, views=2)
    return engine


def test_descriptors_travel_in_the_engine_file_and_find_the_support_keypoints(random_prompt_engine,
                                                                             sample_support, tmp_path):
    from ppmtrack.engine import Engine

    engine = random_prompt_engine
    desc = engine.keypoint_descriptors
    assert desc.shape[0] == len(engine.names)
    np.testing.assert_allclose(desc.norm(dim=1).numpy(), 1.0, atol=1e-5)
    engine.save(tmp_path / "e.engine")
    loaded = Engine.load(tmp_path / "e.engine", model=engine.model)
    np.testing.assert_allclose(loaded.keypoint_descriptors.numpy(), desc.numpy(), atol=1e-6)

    image = sample_support.images[1]
    truth = sample_support.instances()[1].reshape(-1, 2)
    ppm, xy, conf, cell_px = predict_with_features(engine, image[None], desc)
    plain = engine.predict(image[None])
    np.testing.assert_allclose(ppm.keypoints, plain.keypoints, atol=1e-3)  # the same forward, the same maps
    err = np.linalg.norm(xy[0] - truth, axis=1) / float(np.asarray(cell_px).reshape(-1)[0])
    assert np.median(err) <= 1.0  # a support frame: its own descriptors are found there
    assert ((conf >= 0) & (conf <= 1)).all()
    wrapped = DetectorEngine(engine, "features")
    assert wrapped.names == engine.names and wrapped.detector == "features"
    np.testing.assert_allclose(wrapped.predict(image[None]).keypoints, xy)


def test_adaptation_stores_keypoint_descriptors(adapted_engine):
    assert adapted_engine.keypoint_descriptors.shape[0] == len(adapted_engine.names)


def test_features_need_descriptors():
    class Old:
        keypoint_descriptors = None

    with pytest.raises(UsageError, match="adapt it again"):
        DetectorEngine(Old(), "both")
    assert DetectorEngine(Old(), "ppm").detector == "ppm"


def test_detector_features_refuses_several_animals_with_one_line(tmp_path, capsys):
    from ppmtrack.pipelines.cli import main

    video = str(tmp_path / "missing.mp4")
    rc = main(["track", "samples/sample.mp4", "--engine", video, "-o", str(tmp_path / "o"), "--detector", "features",
               "--animals", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--detector features" in err[0]
