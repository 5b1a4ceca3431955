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
    "load_checkpoint": "featurenorm.training.checkpoint",
    "feature_norm": "featurenorm.core.tap",
    "block_feature_norms": "featurenorm.core.tap",
    "FeatureTap": "featurenorm.core.tap",
    "jigsaw": "featurenorm.selection.jigsaw",
    "candidate_blocks": "featurenorm.core.blocks",
    "select_block": "featurenorm.selection.api",
    "BlockSelection": "featurenorm.selection.api",
    "FeatureNormDetector": "featurenorm.evaluation.detector",
    "evaluate": "featurenorm.evaluation.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'featurenorm' has no attribute '{name}'")
