"""OOD scoring methods. Every method maps a batch to scores with **higher = more in-distribution**.

``build_method(name, cfg)`` makes one by name; ``method_names()`` lists them in table order.
Importing this package registers all methods.
"""
from __future__ import annotations

# Importing a module registers its method, so this order is the table order (method_names()): the paper's
# method first, then the logit-based baselines, the feature-based baselines, the block-norm variants, and the
# FeatureNorm over every block (norm_profile).
from . import featurenorm, msp, odin, energy, react, dice, maxlogit  # noqa: F401
from . import mahalanobis, knn, vim, ash  # noqa: F401
from . import msp_blocknorm, odin_blocknorm, energy_blocknorm, norm_profile  # noqa: F401
from .base import METHODS, Method, ModelParts, Outputs, build_method, method_names, register_method
from .blocknorm import blocknorm_logits, blocknorm_logits_fn
from .odin import odin_score

__all__ = ["METHODS", "Method", "ModelParts", "Outputs", "blocknorm_logits", "blocknorm_logits_fn",
           "build_method", "method_names", "odin_score", "register_method"]
