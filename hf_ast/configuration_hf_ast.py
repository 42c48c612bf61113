"""Configuration of the Audio Spectrogram Transformer (Gong et al. 2021, arXiv 2104.01778).

This file is copied next to every saved model so that `trust_remote_code=True` works where
`hf_ast` is not installed: it imports nothing from the `hf_ast` package.
"""

from transformers import PretrainedConfig

# transformers owns this model_type; hf-ast reads its configs and checkpoints as its own.
TRANSFORMERS_AST_MODEL_TYPE = "audio-spectrogram-transformer"


def patch_grid(num_mel_bins: int, num_frames: int, patch_size: int, frequency_stride: int, time_stride: int):
    """Number of patches `(f, t)` along frequency and time for a `(num_frames, num_mel_bins)` spectrogram.

    The one place the patch arithmetic lives (a strided conv without padding): the model, the
    position-embedding re-gridding, the DeiT initialisation and the converters all call it.
    Paper geometry: 128 bins x 1024 frames, 16x16 patches, stride 10 -> (12, 101).
    """
    return (num_mel_bins - patch_size) // frequency_stride + 1, (num_frames - patch_size) // time_stride + 1


def id2label_with_int_keys(id2label: dict) -> dict[int, str]:
    """`id2label` keyed by int class ids; config.json (JSON) stores the keys as strings."""
    return {int(index): label for index, label in id2label.items()}


class HfAstConfig(PretrainedConfig):
    r"""
    Configuration of [`HfAstModel`] and [`HfAstForAudioClassification`]. Fields and defaults are those of
    transformers' `ASTConfig` (the `MIT/ast-finetuned-audioset-10-10-0.4593` geometry).

    Args:
        hidden_size (`int`, defaults to 768): width of the encoder.
        num_hidden_layers (`int`, defaults to 12): number of transformer layers.
        num_attention_heads (`int`, defaults to 12): attention heads per layer.
        intermediate_size (`int`, defaults to 3072): width of the MLP.
        hidden_act (`str`, defaults to `"gelu"`): MLP activation.
        hidden_dropout_prob (`float`, defaults to 0.0): dropout on embeddings and residual branches.
        attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on attention probabilities.
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal weight init.
        layer_norm_eps (`float`, defaults to 1e-12): LayerNorm epsilon (timm-initialised models use 1e-6).
        patch_size (`int`, defaults to 16): square patch side in spectrogram bins/frames.
        qkv_bias (`bool`, defaults to `True`): bias on the query, key and value projections.
        frequency_stride (`int`, defaults to 10): patch stride along the mel axis (10 = overlap 6).
        time_stride (`int`, defaults to 10): patch stride along time.
        max_length (`int`, defaults to 1024): number of frames the position grid was trained on.
        num_mel_bins (`int`, defaults to 128): mel bins of the input filterbank.
        classifier_layer_norm_eps (`float`, *optional*): epsilon of the head's LayerNorm when it
            differs from `layer_norm_eps` (the reference AST's head uses 1e-5, its encoder 1e-6).
        trained_padding (`str`, *optional*): how the model saw its training inputs, so that it is served
            the same way. `"max_length"`: padded to `max_length` frames, padding attended to (the
            reference's way): a frame-level `attention_mask` is then ignored unless the caller passes
            `padding_free=True`. `"longest"`: padding-free (masked batches, each clip's own tokens): the
            mask is honoured. `None` (published checkpoints, older models): the mask is honoured.
        patchout_time (`int`, defaults to 0): training only: whole time columns of the patch grid dropped
            per batch (PaSST's structured patchout, Koutini et al. 2021; their AudioSet setting drops 40 of
            the 101 columns of 1024 frames at stride 10). Counted on the trained grid; an input with fewer
            columns drops the same fraction of its own. `model.eval()` sees every patch.
        patchout_freq (`int`, defaults to 0): training only: whole frequency rows dropped per batch (PaSST: 4 of 12).
        patchout_random (`float`, defaults to 0.0): training only: fraction of each clip's remaining patches
            dropped one by one at random (PaSST's unstructured patchout).
    """

    model_type = "hf_ast"

    # Each field once, as transformers' `ASTConfig` declares them: PretrainedConfig turns the
    # annotated fields into keyword arguments (and an undeclared `max_length` would be taken for a
    # generation parameter, which transformers 5 refuses to save).
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    patch_size: int = 16
    qkv_bias: bool = True
    frequency_stride: int = 10
    time_stride: int = 10
    max_length: int = 1024
    num_mel_bins: int = 128
    classifier_layer_norm_eps: float | None = None
    trained_padding: str | None = None
    # Training-time patch dropping (see HfAstModel.forward). Like wav2vec2's mask_time_prob these
    # live on the config; examples/run_audioset.py saves its final model with them reset to 0.
    patchout_time: int = 0
    patchout_freq: int = 0
    patchout_random: float = 0.0

    def __post_init__(self, **kwargs):
        if self.trained_padding not in (None, "max_length", "longest"):
            raise ValueError(
                f"trained_padding={self.trained_padding!r}; use 'max_length', 'longest' or None (unknown)."
            )
        kwargs.pop("model_type", None)  # always ours, also for a transformers AST config.json
        super().__post_init__(**kwargs)
        self._check_geometry()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        # transformers' AST checkpoints (MIT/ast-finetuned-*) are this architecture with the same
        # field names: read them as ours instead of warning about a foreign model type.
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == TRANSFORMERS_AST_MODEL_TYPE:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def _check_geometry(self):
        # A broken invariant here would otherwise surface as a shape error deep inside the conv or
        # the attention reshape; name the field and the fix instead.
        if isinstance(self.patch_size, (list, tuple)):
            if len(set(self.patch_size)) != 1:
                raise ValueError(f"patch_size={self.patch_size}: AST patches are square; pass one int such as 16.")
            self.patch_size = int(self.patch_size[0])
        for name in ("patch_size", "frequency_stride", "time_stride", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size", "max_length", "num_mel_bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        if self.max_length < self.patch_size:
            raise ValueError(
                f"max_length={self.max_length} is shorter than one patch (patch_size={self.patch_size} frames); "
                f"use max_length >= {self.patch_size}."
            )
        if self.num_mel_bins < self.patch_size:
            raise ValueError(
                f"num_mel_bins={self.num_mel_bins} is smaller than one patch (patch_size={self.patch_size}); "
                f"use num_mel_bins >= {self.patch_size}."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                f"{self.num_attention_heads}; pick a head count that divides it (64-wide heads: "
                f"{max(1, self.hidden_size // 64)})."
            )
        self._check_patchout()

    def _check_patchout(self):
        f, t = self.patch_grid
        for name, size, axis in (("patchout_time", t, "time columns"), ("patchout_freq", f, "frequency rows")):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < size:
                raise ValueError(
                    f"{name}={value!r}, but the patch grid has {size} {axis} ({f}x{t} patches for max_length="
                    f"{self.max_length}, num_mel_bins={self.num_mel_bins}) and patchout must leave at least one: "
                    f"use 0 <= {name} <= {size - 1} (0 = off)."
                )
        value = self.patchout_random
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(
                f"patchout_random={value!r} is the fraction of patches dropped at random and must leave some: "
                "use 0 <= patchout_random < 1 (0 = off)."
            )

    @property
    def patch_grid(self) -> tuple[int, int]:
        """`(f, t)` patches of the trained position grid: (12, 101) for the paper's AudioSet geometry."""
        return patch_grid(self.num_mel_bins, self.max_length, self.patch_size, self.frequency_stride, self.time_stride)


__all__ = ["HfAstConfig", "id2label_with_int_keys", "patch_grid"]
