"""Initialise an AST from ImageNet DeiT/ViT weights: the paper's key trick (Gong et al. 2021, section 2.2).

Start from an ImageNet DeiT: sum or average the RGB patch kernels into one channel, cut or
interpolate the 24x24 image position grid to the audio patch grid, and copy every encoder tensor.
Pure functions over state dicts, in the spirit of timm's `checkpoint_filter_fn`:

    backbone_fields_from_transformers_config(config_dict)    -> {"hidden_size": ..., ...}
    backbone_fields_from_timm_state_dict(state_dict)         -> {"hidden_size": ..., ...}
    build_ast_config(backbone_fields, config, **overrides)   -> HfAstConfig
    deit_state_dict_to_ast(state_dict, source_format, ast_config, channel_reduction) -> state dict

plus one thin loader, `ast_from_deit` (behind `HfAstForAudioClassification.from_deit`), that reads
a checkpoint with `state_dicts.load_checkpoint` and builds the model. Returned state dicts use the
names of `HfAstForAudioClassification` (`audio_spectrogram_transformer.embeddings...`), the
released transformers AST names.
"""

import math
import re

import torch
from transformers.utils import logging

from ..configuration_hf_ast import HfAstConfig, id2label_with_int_keys
from ..modeling_hf_ast import regrid_position_embeddings
from .state_dicts import (
    BASE_PREFIX,
    backbone_from_timm,
    backbone_from_transformers,
    check_against_model,
    config_fields,
    detect_source_format,
    expected_backbone_shapes,
    load_checkpoint,
    log_dropped,
    raise_unknown,
)

logger = logging.get_logger(__name__)

CHANNEL_REDUCTIONS = ("mean", "sum")
# timm's ViT/DeiT blocks use nn.LayerNorm(eps=1e-6); transformers' configs say 1e-12.
TIMM_LAYER_NORM_EPS = 1e-6
# timm (and the DeiT paper) use 64-wide heads: tiny 192/3, small 384/6, base 768/12.
TIMM_HEAD_DIM = 64


# ---------------------------------------------------------------------------------------------
# Architecture and config
# ---------------------------------------------------------------------------------------------


def backbone_fields_from_transformers_config(config_dict: dict) -> dict:
    """The backbone fields of a transformers DeiT/ViT `config.json` (the DeiT/ViT defaults where absent)."""
    model_type = config_dict.get("model_type")
    if model_type not in ("deit", "vit"):
        raise ValueError(
            f"config.json has model_type={model_type!r}; from_deit takes a transformers DeiT or ViT checkpoint "
            "(model_type 'deit' or 'vit') or a timm state dict file."
        )
    defaults = {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-12,
        "qkv_bias": True,
        "hidden_act": "gelu",
    }
    return {field: config_dict.get(field, default) for field, default in defaults.items()}


def _image_grid_from_transformers_config(config_dict: dict) -> int | None:
    image_size, patch_size = config_dict.get("image_size", 224), config_dict.get("patch_size", 16)
    if isinstance(image_size, (list, tuple)) or isinstance(patch_size, (list, tuple)):
        return None  # non-square sources are caught by the square-grid check
    return image_size // patch_size


def _num_timm_blocks(state_dict, prefix: str = "") -> int:
    pattern = re.compile(re.escape(prefix) + r"blocks\.(\d+)\.")
    indices = {int(match.group(1)) for name in state_dict if (match := pattern.match(name))}
    if indices != set(range(len(indices))):
        raise ValueError(f"timm checkpoint has blocks {sorted(indices)}: block indices must run from 0 without gaps.")
    return len(indices)


def backbone_fields_from_timm_state_dict(
    state_dict: dict[str, torch.Tensor], num_attention_heads: int | None = None, prefix: str = ""
) -> dict:
    """Backbone fields read off timm tensor shapes; heads are `hidden / 64` (timm's DeiT/ViT) unless given."""
    hidden_size = state_dict[prefix + "pos_embed"].shape[-1]
    if num_attention_heads is None:
        if hidden_size % TIMM_HEAD_DIM:
            raise ValueError(
                f"a timm state dict does not record its head count, and hidden size {hidden_size} is not a "
                f"multiple of timm's {TIMM_HEAD_DIM}-wide heads; pass num_attention_heads=..."
            )
        num_attention_heads = hidden_size // TIMM_HEAD_DIM
    fc1 = prefix + "blocks.0.mlp.fc1.weight"
    if fc1 not in state_dict:
        raise ValueError(f"timm checkpoint has no {fc1}: cannot read the MLP width.")
    return {
        "hidden_size": hidden_size,
        "num_hidden_layers": _num_timm_blocks(state_dict, prefix),
        "num_attention_heads": num_attention_heads,
        "intermediate_size": state_dict[fc1].shape[0],
        "layer_norm_eps": TIMM_LAYER_NORM_EPS,
        "qkv_bias": prefix + "blocks.0.attn.qkv.bias" in state_dict,
        "hidden_act": "gelu",  # timm's nn.GELU: the exact (erf) form, transformers' "gelu"
    }


_LABEL_FIELDS = ("id2label", "label2id", "num_labels")


def build_ast_config(backbone_fields: dict, config: HfAstConfig | None = None, **overrides) -> HfAstConfig:
    """An `HfAstConfig` with the checkpoint's backbone and the AST's geometry and labels.

    Geometry, labels, dropout etc. come from `overrides`, else from `config`, else the paper's
    AudioSet defaults (1024 frames, 128 mel bins, stride 10). Backbone fields always come from the
    checkpoint: an override that contradicts it raises (its tensors would not fit); a `config`
    that disagrees is corrected with a log line.
    """
    allowed = set(HfAstConfig().to_dict()) | set(_LABEL_FIELDS)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(f"unknown HfAstConfig fields {unknown}; valid ones include {sorted(allowed - {'model_type'})}")
    for field, value in overrides.items():
        if field in backbone_fields and value != backbone_fields[field]:
            raise ValueError(
                f"{field}={value!r} contradicts the checkpoint, which has {field}={backbone_fields[field]!r}; "
                f"leave {field} out (the backbone's architecture comes from the checkpoint)."
            )
    fields = {}
    if config is not None:
        fields = config_fields(config.to_dict())
        changed = {f: (fields[f], v) for f, v in backbone_fields.items() if f in fields and fields[f] != v}
        if changed:
            logger.info(f"the checkpoint's backbone fields replace the config's (config, checkpoint): {changed}")
        if any(field in overrides for field in _LABEL_FIELDS):
            for field in _LABEL_FIELDS:
                fields.pop(field, None)
    fields.update(backbone_fields)
    fields.update(overrides)
    if fields.get("id2label") is not None:
        fields["id2label"] = id2label_with_int_keys(fields["id2label"])
        if fields.get("label2id") is None:
            fields["label2id"] = {label: index for index, label in fields["id2label"].items()}
    return HfAstConfig(**fields)


# ---------------------------------------------------------------------------------------------
# Shape adaptation and the final check
# ---------------------------------------------------------------------------------------------


def check_channel_reduction(channel_reduction: str):
    if channel_reduction not in CHANNEL_REDUCTIONS:
        raise ValueError(
            f"channel_reduction={channel_reduction!r}; use 'mean' (average the RGB kernels, the paper's wording) "
            "or 'sum' (the reference implementation; equals feeding the spectrogram to all three channels)."
        )


def reduce_patch_kernel(weight: torch.Tensor, channel_reduction: str, patch_size: int) -> torch.Tensor:
    """`(C, 3, p, p)` RGB patch kernels -> `(C, 1, p, p)` for a one-channel spectrogram."""
    check_channel_reduction(channel_reduction)
    if tuple(weight.shape[-2:]) != (patch_size, patch_size):
        raise ValueError(
            f"the source patch kernel is {weight.shape[-2]}x{weight.shape[-1]} but config.patch_size={patch_size}; "
            f"AST reuses the kernel as is, so use a source with {patch_size}x{patch_size} patches or set "
            f"patch_size={weight.shape[-1]}."
        )
    if channel_reduction == "sum":
        return weight.sum(dim=1, keepdim=True)
    return weight.mean(dim=1, keepdim=True)



def deit_state_dict_to_ast(
    state_dict: dict[str, torch.Tensor],
    source_format: str,
    ast_config: HfAstConfig,
    channel_reduction: str = "mean",
    image_grid: int | None = None,
) -> dict[str, torch.Tensor]:
    """ImageNet DeiT/ViT tensors -> the backbone of an `HfAstForAudioClassification` for `ast_config`.

    `source_format` is "transformers" (DeiT/ViT, legacy or current names, with or without the
    `deit.`/`vit.` prefix) or "timm" (see `detect_source_format`). Returns every backbone tensor
    under its `audio_spectrogram_transformer.` name; the head (`classifier.*`) is left to a fresh
    init. `image_grid` (patches per side, e.g. 24 for 384 px) is checked when given.

    - Patch projection: RGB kernels averaged (`"mean"`) or summed (`"sum"`) to one channel; bias copied.
    - Position embeddings: prefix tokens (cls [+ dist]) kept in front, the image grid re-gridded by
      the reference rule (`regrid_position_embeddings`) to `ast_config.patch_grid`.
    - ViT (no distillation token): the token and its position embedding start as copies of cls's.
    - Every encoder tensor copied exactly (fused timm qkv split into query, key, value).
    """
    check_channel_reduction(channel_reduction)
    if source_format == "transformers":
        backbone, dropped, unknown = backbone_from_transformers(state_dict)
    elif source_format == "timm":
        backbone, dropped, unknown = backbone_from_timm(state_dict)
    elif source_format in ("transformers-ast", "original-ast"):
        raise ValueError(
            f"this is an AST checkpoint ({source_format}), not an ImageNet DeiT/ViT; load it with "
            "hf_ast.conversion (`hf-ast-convert transformers|original`), then HfAstForAudioClassification."
            "from_pretrained_with_geometry to change its geometry."
        )
    else:
        raise ValueError(f"source_format={source_format!r}; use 'transformers' or 'timm'.")
    raise_unknown(unknown, source_format)
    log_dropped(dropped, "image-classification tensors that AST does not use")

    for name in ("embeddings.cls_token", "embeddings.position_embeddings",
                 "embeddings.patch_embeddings.projection.weight"):
        if name not in backbone:
            raise ValueError(f"the {source_format} checkpoint has no {name} (or its {source_format} equivalent).")
    cls_token = backbone["embeddings.cls_token"]
    positions = backbone["embeddings.position_embeddings"]  # (1, prefix + H*W, C)
    if "embeddings.distillation_token" in backbone:
        num_prefix = 2
    else:
        # A ViT has cls only; AST's head averages cls and dist outputs, so dist starts as a copy of cls.
        num_prefix = 1
        backbone["embeddings.distillation_token"] = cls_token.clone()
        logger.info("the source has no distillation token (a ViT): initialised it and its position embedding from cls")

    num_patches = positions.shape[1] - num_prefix
    side = math.isqrt(num_patches)
    if side * side != num_patches or (image_grid is not None and side != image_grid):
        expected = f"{image_grid}x{image_grid}" if image_grid is not None else "a square grid"
        raise ValueError(
            f"position embeddings have {positions.shape[1]} rows = {num_prefix} prefix tokens + {num_patches} "
            f"patches, expected {expected}; the checkpoint's image geometry is not a square patch grid."
        )
    if num_prefix == 1:
        positions = torch.cat([positions[:, :1], positions[:, :1], positions[:, 1:]], dim=1)  # cls, dist=cls, grid
    # Interpolation and averaging in float32 (half-precision sources included), stored in the source dtype.
    backbone["embeddings.position_embeddings"] = regrid_position_embeddings(
        positions.float(), (side, side), ast_config.patch_grid
    ).to(positions.dtype)
    kernel = backbone["embeddings.patch_embeddings.projection.weight"]
    backbone["embeddings.patch_embeddings.projection.weight"] = reduce_patch_kernel(
        kernel.float(), channel_reduction, ast_config.patch_size
    ).to(kernel.dtype)
    logger.info(
        f"patch kernels: RGB {channel_reduction} -> 1 channel; position grid {side}x{side} -> "
        f"{ast_config.patch_grid[0]}x{ast_config.patch_grid[1]} (frequency x time, centre cut / bilinear)"
    )

    converted = {BASE_PREFIX + name: tensor.detach().clone().contiguous() for name, tensor in backbone.items()}
    check_against_model(converted, expected_backbone_shapes(ast_config), source_format)
    return converted


# ---------------------------------------------------------------------------------------------
# The thin loader behind HfAstForAudioClassification.from_deit
# ---------------------------------------------------------------------------------------------


def ast_from_deit(
    cls, name_or_path, config: HfAstConfig | None = None, channel_reduction: str = "mean", **config_overrides
):
    """Build `cls` (an hf-ast model class) from an ImageNet DeiT/ViT checkpoint; see `from_deit`.

    Reads the checkpoint (`load_checkpoint`), recognises it (`detect_source_format`), builds the
    config (`build_ast_config`), converts the tensors (`deit_state_dict_to_ast`) and loads them;
    only the classification head keeps its fresh initialisation.
    """
    check_channel_reduction(channel_reduction)
    state_dict, source_config = load_checkpoint(name_or_path)
    source_format = detect_source_format(state_dict)
    image_grid = None
    if source_format == "transformers":
        if source_config is None:
            raise ValueError(
                f"{name_or_path} holds transformers DeiT/ViT tensors but no config.json; pass the model directory."
            )
        backbone_fields = backbone_fields_from_transformers_config(source_config)
        image_grid = _image_grid_from_transformers_config(source_config)
    elif source_format == "timm":
        backbone_fields = backbone_fields_from_timm_state_dict(
            state_dict, num_attention_heads=config_overrides.get("num_attention_heads")
        )
    else:
        backbone_fields = {}  # deit_state_dict_to_ast explains what to do with an AST checkpoint
    ast_config = build_ast_config(backbone_fields, config, **config_overrides)
    converted = deit_state_dict_to_ast(state_dict, source_format, ast_config, channel_reduction, image_grid)

    model = cls(ast_config)
    if not hasattr(model, model.base_model_prefix):  # the bare encoder: its names have no prefix
        converted = {name[len(BASE_PREFIX):]: tensor for name, tensor in converted.items()}
    missing, unexpected = model.load_state_dict(converted, strict=False)
    not_head = [name for name in missing if not name.startswith("classifier.")]
    if not_head or unexpected:
        raise RuntimeError(f"from_deit left missing keys {not_head} and unexpected keys {unexpected}")
    logger.info(
        f"initialised an AST from {name_or_path} ({source_format}); the classification head "
        f"({ast_config.num_labels} labels) is new and must be trained"
    )
    return model.eval()


__all__ = [
    "CHANNEL_REDUCTIONS",
    "ast_from_deit",
    "backbone_fields_from_timm_state_dict",
    "backbone_fields_from_transformers_config",
    "build_ast_config",
    "check_channel_reduction",
    "deit_state_dict_to_ast",
    "reduce_patch_kernel",
]
