"""Architectures with named blocks. Importing this package registers them all."""
from . import resnet, vgg, wrn  # noqa: F401  (registration)
from .registry import MODELS, block_names, build_model, model_names, register_model

__all__ = ["MODELS", "block_names", "build_model", "model_names", "register_model"]
