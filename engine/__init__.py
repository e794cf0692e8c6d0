"""ppmtrack's model side: Prompt Pose Matching on a frozen diffusion UNet. Nothing here knows about video."""

from ppmtrack.engine.adapt import AdaptConfig
from ppmtrack.engine.api import Engine, FgarConfig, Prediction
from ppmtrack.engine.engine_file import EngineFileError
from ppmtrack.engine.interface import EngineLike
from ppmtrack.engine.loading import load_engine
from ppmtrack.engine.models import DEFAULT_MODEL, ModelLoadError, load_model
from ppmtrack.engine.support import SupportSet

__all__ = ["AdaptConfig", "DEFAULT_MODEL", "Engine", "EngineFileError", "EngineLike", "FgarConfig", "ModelLoadError",
           "Prediction", "SupportSet", "load_engine", "load_model"]
