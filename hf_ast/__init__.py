"""hf-ast: the Audio Spectrogram Transformer (Gong et al. 2021) for the Hugging Face ecosystem.

Importing the package registers the model with transformers' Auto classes, keyed on the
config's own `model_type` ("hf_ast"; transformers owns "audio-spectrogram-transformer").

The model (config, feature extractor, modeling, long audio) sits at the top level, next to the
inference helpers (`hear`, `optimize`, `export`); checkpoint conversion lives in
`hf_ast.conversion`, everything training needs in `hf_ast.training`.
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_hf_ast import HfAstConfig, patch_grid
from .feature_extraction_hf_ast import HfAstFeatureExtractor
from .long_audio import (
    LONG_AUDIO_TASK,
    LongAudioClassificationPipeline,
    WindowScores,
    classify_long_audio,
    plot_long_audio,
    score_windows,
)
from .modeling_hf_ast import (
    HfAstForAudioClassification,
    HfAstModel,
    HfAstPreTrainedModel,
    regrid_position_embeddings,
    resize_position_grid,
)
from .optimize import optimize_for_inference

__version__ = "0.1.0"

AutoConfig.register(HfAstConfig.model_type, HfAstConfig, exist_ok=True)
AutoModel.register(HfAstConfig, HfAstModel, exist_ok=True)
AutoModelForAudioClassification.register(HfAstConfig, HfAstForAudioClassification, exist_ok=True)
AutoFeatureExtractor.register(HfAstConfig, HfAstFeatureExtractor, exist_ok=True)

# Saved models carry these files and an `auto_map`, so `trust_remote_code=True` loads them
# where hf_ast is not installed.
HfAstConfig.register_for_auto_class()
HfAstModel.register_for_auto_class("AutoModel")
HfAstForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
HfAstFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

# pipeline("audio-classification-long") for recordings of any length. Saved classifiers also declare it
# in config.json (`custom_pipelines`), so it loads with trust_remote_code=True where hf_ast is missing.
PIPELINE_REGISTRY.register_pipeline(
    LONG_AUDIO_TASK,
    pipeline_class=LongAudioClassificationPipeline,
    pt_model=AutoModelForAudioClassification,
    type="audio",
)

__all__ = [
    "LONG_AUDIO_TASK",
    "HfAstConfig",
    "HfAstFeatureExtractor",
    "HfAstForAudioClassification",
    "HfAstModel",
    "HfAstPreTrainedModel",
    "LongAudioClassificationPipeline",
    "WindowScores",
    "classify_long_audio",
    "optimize_for_inference",
    "patch_grid",
    "plot_long_audio",
    "regrid_position_embeddings",
    "resize_position_grid",
    "score_windows",
]
