"""ppmtrack's model side: Prompt Pose Matching on a frozen diffusion UNet. Nothing here knows about video."""

from engine.adapt import AdaptConfig
from engine.api import Engine, FgarConfig, Prediction
from engine.engine_file import EngineFileError
from engine.models import DEFAULT_MODEL, ModelLoadError, load_model
from engine.support import SupportSet

__all__ = ["AdaptConfig", "DEFAULT_MODEL", "Engine", "EngineFileError", "FgarConfig", "ModelLoadError",
           "Prediction", "SupportSet", "load_model"]
