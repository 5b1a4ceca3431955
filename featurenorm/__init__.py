"""featurenorm: FeatureNorm with NormRatio block selection for out-of-distribution detection.

Yu et al., "Block Selection Method for Using Feature Norm in Out-of-distribution Detection",
CVPR 2023, https://arxiv.org/abs/2212.02295.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names, imported on first use so that `import featurenorm` stays cheap.
_EXPORTS = {
    # the stages
    "select_block": "featurenorm.selection.api",
    "BlockSelection": "featurenorm.selection.api",
    "FeatureNormDetector": "featurenorm.evaluation.detector",
    "evaluate": "featurenorm.evaluation.api",
    # the building blocks
    "feature_norm": "featurenorm.core.tap",
    "block_feature_norms": "featurenorm.core.tap",
    "FeatureTap": "featurenorm.core.tap",
    "candidate_blocks": "featurenorm.core.blocks",
    "norm_ratio": "featurenorm.selection.ratios",
    "BlockRow": "featurenorm.core.block_rows",
    "SelectedBlock": "featurenorm.core.block_rows",
    "jigsaw": "featurenorm.selection.jigsaw",
    "auroc": "featurenorm.core.metrics",
    "aupr": "featurenorm.core.metrics",
    "fpr_at_tpr": "featurenorm.core.metrics",
    "fpr_at_ood_recall": "featurenorm.core.metrics",
    "ood_metrics": "featurenorm.core.metrics",
    "build_model": "featurenorm.models",
    "block_names": "featurenorm.models",
    "model_names": "featurenorm.models",
    # the extension points
    "Method": "featurenorm.methods",
    "register_method": "featurenorm.methods",
    "register_model": "featurenorm.models",
    "register_pseudo_ood": "featurenorm.selection.pseudo_ood",
    "Criterion": "featurenorm.core.criteria",
    "register_criterion": "featurenorm.core.criteria",
    # runs, checkpoints and config
    "load_checkpoint": "featurenorm.training.checkpoint",
    "Config": "featurenorm.config",
    "load_config": "featurenorm.config",
    "UserError": "featurenorm.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'featurenorm' has no attribute '{name}'")
