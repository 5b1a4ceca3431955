"""featurenorm: FeatureNorm with NormRatio block selection for out-of-distribution detection.

Yu et al., "Block Selection Method for Using Feature Norm in Out-of-distribution Detection",
CVPR 2023, https://arxiv.org/abs/2212.02295.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names, imported on first use so that `import featurenorm` stays cheap.
_EXPORTS = {
    "Config": "featurenorm.config",
    "load_config": "featurenorm.config",
    "UserError": "featurenorm.errors",
    "build_model": "featurenorm.models",
    "block_names": "featurenorm.models",
    "model_names": "featurenorm.models",
    "register_model": "featurenorm.models",
    "load_checkpoint": "featurenorm.checkpoint",
    "feature_norm": "featurenorm.features",
    "block_feature_norms": "featurenorm.features",
    "FeatureTap": "featurenorm.features",
    "jigsaw": "featurenorm.data.jigsaw",
    "candidate_blocks": "featurenorm.models.blocks",
    "select_block": "featurenorm.selection",
    "BlockSelection": "featurenorm.selection",
    "FeatureNormDetector": "featurenorm.detector",
    "evaluate": "featurenorm.evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'featurenorm' has no attribute '{name}'")
