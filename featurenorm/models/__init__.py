"""Architectures with named blocks. Importing this package registers them all."""
# registration, in the order the error for an unknown name lists the families
from . import resnet, vgg, wrn  # noqa: F401  isort: skip
from . import timm_models, torchvision_models  # noqa: F401  isort: skip
from .registry import FAMILIES, MODELS, block_names, build_model, model_names, register_family, register_model

__all__ = ["FAMILIES", "MODELS", "block_names", "build_model", "model_names", "register_family", "register_model"]
