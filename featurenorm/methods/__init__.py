"""OOD scoring methods. Every method maps a batch to scores with **higher = more in-distribution**.

``build_method(name, cfg)`` makes one by name; ``method_names()`` lists them in table order.
Importing this package registers all methods.
"""
from __future__ import annotations

from . import (ash, dice, energy, energy_blocknorm, featurenorm, knn, mahalanobis, maxlogit,  # noqa: F401
               msp, msp_blocknorm, odin, odin_blocknorm, react, vim)
from .base import METHOD_ORDER, METHODS, Method, ModelParts, Outputs, build_method, method_names, register_method
from .blocknorm import blocknorm_logits, blocknorm_logits_fn
from .odin import odin_score

__all__ = ["METHODS", "METHOD_ORDER", "Method", "ModelParts", "Outputs", "blocknorm_logits", "blocknorm_logits_fn",
           "build_method", "method_names", "odin_score", "register_method"]
