"""Diffusion models: presets (``conf/model``), loading, and attention capture passes."""
from benchmark.models.config import ModelConfig
from benchmark.models.diffusion import DiffusionModel
from benchmark.models.loading import LazyModel, ModelNotFoundError, load_model

__all__ = ["DiffusionModel", "LazyModel", "ModelConfig", "ModelNotFoundError", "load_model"]
