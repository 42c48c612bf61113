"""Trained AST checkpoints in and out: the reference repository's `.pth`, transformers' AST, and back.

    original_ast_state_dict_to_hf_ast(state_dict, ...)        -> (state dict, HfAstConfig)
    hf_ast_config_from_transformers(config_dict)              -> HfAstConfig
    transformers_ast_state_dict_to_hf_ast(state_dict, config) -> state dict
    hf_ast_config_to_transformers(config)                     -> transformers ASTConfig

hf-ast keeps the released transformers AST parameter names, so transformers' checkpoints map one
to one (only transformers 5's in-memory names are renamed back); the reference repository's are a
timm DeiT (`module.v.*`) plus its MLP head (`module.mlp_head.*`). Pure functions over state dicts
and config dicts: reading and writing folders is `hf_ast.conversion.cli`'s job.
"""

import re

import torch
from transformers.utils import logging

from ..configuration_hf_ast import TRANSFORMERS_AST_MODEL_TYPE, HfAstConfig
from ..modeling_hf_ast import NUM_PREFIX_TOKENS
from .deit import backbone_fields_from_timm_state_dict, build_ast_config
from .state_dicts import (
    BASE_PREFIX,
    backbone_from_timm,
    check_against_model,
    config_fields,
    expected_backbone_shapes,
    legacy_vit_key,
    log_dropped,
    raise_unknown,
    strip_module,
)

logger = logging.get_logger(__name__)

# The reference AST's head LayerNorm is a bare nn.LayerNorm (eps 1e-5); hf-ast has one eps for all norms.
REFERENCE_HEAD_LAYER_NORM_EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# The reference repository's AST checkpoints (YuanGongND/ast)
# ---------------------------------------------------------------------------------------------


def original_ast_state_dict_to_hf_ast(
    state_dict: dict[str, torch.Tensor],
    max_length: int = 1024,
    num_mel_bins: int = 128,
    frequency_stride: int = 10,
    time_stride: int = 10,
    num_attention_heads: int | None = None,
    id2label: dict | None = None,
) -> tuple[dict[str, torch.Tensor], HfAstConfig]:
    """A YuanGongND/ast checkpoint (`module.v.*` timm DeiT + `module.mlp_head.*`) -> hf-ast tensors and config.

    The architecture is read off the tensor shapes (heads: hidden / 64 unless given); the geometry
    cannot be, so it comes from the arguments (default: the paper's AudioSet geometry, 1024 frames,
    128 bins, stride 10) and is checked against the position-embedding rows. The head
    (`mlp_head.0` LayerNorm, `mlp_head.1` Linear) and the position grid are kept as they are; the
    unused ImageNet heads `v.head`/`v.head_dist` are dropped with a log line. LayerNorm eps is
    timm's 1e-6 everywhere (the reference's head LayerNorm used 1e-5; the difference is far below
    float32 noise for unit-variance features).
    """
    original_names = {strip_module(name): name for name in state_dict}  # messages name the keys as saved
    state_dict = {strip_module(name): tensor for name, tensor in state_dict.items()}
    if "v.pos_embed" not in state_dict:
        raise ValueError(
            "not a YuanGongND/ast checkpoint: no module.v.pos_embed; for an ImageNet DeiT/ViT use from_deit "
            "(`hf-ast-convert deit`)."
        )
    backbone, dropped, unknown = backbone_from_timm(state_dict, prefix="v.")
    head = {}
    for name, tensor in state_dict.items():
        match = re.fullmatch(r"mlp_head\.([01])\.(weight|bias)", name)
        if match:
            head[f"classifier.{'layernorm' if match.group(1) == '0' else 'dense'}.{match.group(2)}"] = tensor
        elif not name.startswith("v."):
            unknown.append(name)
    raise_unknown([original_names[name] for name in unknown], "reference AST")
    log_dropped([original_names[name] for name in dropped], "unused ImageNet head tensors of the reference AST's DeiT")

    fields = backbone_fields_from_timm_state_dict(state_dict, num_attention_heads, prefix="v.")
    if "classifier.dense.weight" not in head:
        raise ValueError("the reference AST checkpoint has no module.mlp_head.1.weight (the classifier).")
    num_labels = head["classifier.dense.weight"].shape[0]
    labels = {}
    if id2label is not None:
        if len(id2label) != num_labels:
            raise ValueError(
                f"{len(id2label)} labels given, but the checkpoint's classifier has {num_labels} outputs."
            )
        labels = {"id2label": id2label}
    else:
        labels = {"num_labels": num_labels}
    config = build_ast_config(
        fields,
        max_length=max_length,
        num_mel_bins=num_mel_bins,
        frequency_stride=frequency_stride,
        time_stride=time_stride,
        classifier_layer_norm_eps=REFERENCE_HEAD_LAYER_NORM_EPS,
        **labels,
    )
    f, t = config.patch_grid
    rows = backbone["embeddings.position_embeddings"].shape[1]
    if rows != NUM_PREFIX_TOKENS + f * t:
        hint = ""
        if (rows - NUM_PREFIX_TOKENS) % f == 0:
            # t columns come from any length in [(t-1)*stride + patch, t*stride + patch)
            checkpoint_t = (rows - NUM_PREFIX_TOKENS) // f
            shortest = (checkpoint_t - 1) * time_stride + config.patch_size
            hint = (f" With these mel bins and strides the grid is {f}x{checkpoint_t}: max_length {shortest} to "
                    f"{shortest + time_stride - 1}.")
        raise ValueError(
            f"the checkpoint's position embeddings have {rows} rows, but max_length={max_length}, "
            f"num_mel_bins={num_mel_bins}, frequency_stride={frequency_stride}, time_stride={time_stride} give "
            f"{NUM_PREFIX_TOKENS} + {f}x{t} = {NUM_PREFIX_TOKENS + f * t}; pass the geometry the model was trained "
            f"with (--max-length, --num-mel-bins, --fstride, --tstride).{hint}"
        )
    projection = backbone["embeddings.patch_embeddings.projection.weight"]
    if projection.shape[1] != 1 or tuple(projection.shape[-2:]) != (config.patch_size, config.patch_size):
        raise ValueError(
            f"the checkpoint's patch projection has shape {tuple(projection.shape)}; a reference AST has "
            f"(hidden, 1, {config.patch_size}, {config.patch_size})."
        )

    converted = {BASE_PREFIX + name: tensor for name, tensor in backbone.items()}
    converted.update(head)
    converted = {name: tensor.detach().clone().contiguous() for name, tensor in converted.items()}
    expected = expected_backbone_shapes(config)
    expected.update({
        "classifier.layernorm.weight": torch.Size([config.hidden_size]),
        "classifier.layernorm.bias": torch.Size([config.hidden_size]),
        "classifier.dense.weight": torch.Size([num_labels, config.hidden_size]),
        "classifier.dense.bias": torch.Size([num_labels]),
    })
    check_against_model(converted, expected, "reference AST")
    return converted, config



# ---------------------------------------------------------------------------------------------
# transformers' AST
# ---------------------------------------------------------------------------------------------


def hf_ast_config_from_transformers(config_dict: dict) -> HfAstConfig:
    """A transformers `ASTConfig` dict (config.json) -> `HfAstConfig` with the same fields and labels."""
    if config_dict.get("model_type") != TRANSFORMERS_AST_MODEL_TYPE:
        raise ValueError(
            f"config.json has model_type={config_dict.get('model_type')!r}; the `transformers` subcommand takes a "
            "transformers AST (model_type 'audio-spectrogram-transformer'). Use `deit` for DeiT/ViT checkpoints."
        )
    # PretrainedConfig reads id2label's string keys (JSON) as ints.
    return HfAstConfig(**config_fields(config_dict, HfAstConfig().to_dict()))


def transformers_ast_state_dict_to_hf_ast(
    state_dict: dict[str, torch.Tensor], config: HfAstConfig
) -> dict[str, torch.Tensor]:
    """transformers AST tensors -> hf-ast tensors; every key must land, none may be left over.

    On disk transformers writes the released names, which are hf-ast's; tensors saved under
    transformers 5's in-memory names (`layers.N.attention.q_proj`, ...) are renamed back.
    """
    converted, unknown = {}, []
    for name, tensor in state_dict.items():
        if name.startswith("classifier."):
            converted[name] = tensor
            continue
        target = legacy_vit_key(name[len(BASE_PREFIX):]) if name.startswith(BASE_PREFIX) else None
        if target is None:
            unknown.append(name)
        else:
            converted[BASE_PREFIX + target] = tensor
    expected = expected_backbone_shapes(config)
    head = {f"classifier.{module}.{kind}" for module in ("layernorm", "dense") for kind in ("weight", "bias")}
    missing = sorted((set(expected) | head) - set(converted))
    unexpected = sorted(unknown + [name for name in converted if name not in expected and name not in head])
    if missing or unexpected:
        raise ValueError(
            f"the transformers AST checkpoint does not match its config: missing {missing}, unexpected {unexpected}."
        )
    wrong = {name: (tuple(converted[name].shape), tuple(shape)) for name, shape in expected.items()
             if converted[name].shape != shape}
    if wrong:
        raise ValueError(f"tensor shapes do not match the config ((got, expected)): {wrong}")
    return converted


def hf_ast_config_to_transformers(config: HfAstConfig):
    """`HfAstConfig` -> transformers `ASTConfig` (the same field vocabulary) with the same labels."""
    from transformers import ASTConfig

    fields = config_fields({name: getattr(config, name) for name in ASTConfig().to_dict() if hasattr(config, name)})
    head_eps = getattr(config, "classifier_layer_norm_eps", None)
    if head_eps is not None and head_eps != config.layer_norm_eps:
        logger.warning(
            f"transformers' AST has one LayerNorm eps: the head's {head_eps} becomes {config.layer_norm_eps} "
            "(logits move by about that much at most)"
        )
    return ASTConfig(**fields, architectures=["ASTForAudioClassification"])


__all__ = [
    "hf_ast_config_from_transformers",
    "hf_ast_config_to_transformers",
    "original_ast_state_dict_to_hf_ast",
    "transformers_ast_state_dict_to_hf_ast",
]
