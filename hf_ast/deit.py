"""Initialise an AST from ImageNet DeiT/ViT weights; convert the reference repository's AST checkpoints.

The paper's key trick (Gong et al. 2021, section 2.2) is to start from an ImageNet DeiT: sum or
average the RGB patch kernels into one channel, cut or interpolate the 24x24 image position grid
to the audio patch grid, and copy every encoder tensor. Everything here is a pure function over
state dicts, in the spirit of timm's `checkpoint_filter_fn`:

    detect_source_format(state_dict)                         -> "transformers" | "timm" | ...
    backbone_fields_from_transformers_config(config_dict)    -> {"hidden_size": ..., ...}
    backbone_fields_from_timm_state_dict(state_dict)         -> {"hidden_size": ..., ...}
    build_ast_config(backbone_fields, config, **overrides)   -> HfAstConfig
    deit_state_dict_to_ast(state_dict, source_format, ast_config, channel_reduction) -> state dict
    original_ast_state_dict_to_hf_ast(state_dict, ...)       -> (state dict, HfAstConfig)

plus one thin loader, `ast_from_deit` (behind `HfAstForAudioClassification.from_deit`), that reads
a checkpoint with `load_checkpoint` and builds the model. Returned state dicts use the names of
`HfAstForAudioClassification` (`audio_spectrogram_transformer.embeddings...`), the released
transformers AST names. A source tensor is either used, or dropped with a log line because it is
known to be unused (ImageNet classification heads and the pooler); anything else raises, because
silently ignoring it would build a different network.
"""

import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers.utils import logging

from .configuration_hf_ast import HfAstConfig
from .modeling_hf_ast import NUM_PREFIX_TOKENS, HfAstModel, regrid_position_embeddings

logger = logging.get_logger(__name__)

BASE_PREFIX = HfAstModel.base_model_prefix + "."  # "audio_spectrogram_transformer."
CHANNEL_REDUCTIONS = ("mean", "sum")
# Backbone fields an AST takes from its source checkpoint (geometry and labels are the AST's own).
BACKBONE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "layer_norm_eps",
    "qkv_bias",
    "hidden_act",
)
# timm's ViT/DeiT blocks use nn.LayerNorm(eps=1e-6); transformers' configs say 1e-12.
TIMM_LAYER_NORM_EPS = 1e-6
# The reference AST's head LayerNorm is a bare nn.LayerNorm (eps 1e-5); hf-ast has one eps for all norms.
REFERENCE_HEAD_LAYER_NORM_EPS = 1e-5
# timm (and the DeiT paper) use 64-wide heads: tiny 192/3, small 384/6, base 768/12.
TIMM_HEAD_DIM = 64


# ---------------------------------------------------------------------------------------------
# Recognising and reading checkpoints
# ---------------------------------------------------------------------------------------------


def unwrap_checkpoint(checkpoint) -> dict[str, torch.Tensor]:
    """A `torch.load` result -> flat `{name: tensor}`; training scripts often nest it under "model" or "state_dict"."""
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(
            f"checkpoint is a {type(checkpoint).__name__}, not a state dict; pass a file saved with "
            "torch.save(model.state_dict()) (optionally wrapped in {'model': ...} or {'state_dict': ...})."
        )
    not_tensors = [name for name, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"checkpoint entries {not_tensors[:5]} are not tensors; pass the model's state dict, not a "
            "training checkpoint with optimizer state (or unwrap it first)."
        )
    return checkpoint


def _strip_module(name: str) -> str:
    # nn.DataParallel (the reference training script) prefixes every name with "module.".
    return name[len("module."):] if name.startswith("module.") else name


def detect_source_format(state_dict: dict[str, torch.Tensor]) -> str:
    """Recognise a checkpoint by telltale keys.

    Returns "original-ast" (YuanGongND/ast: `module.v.pos_embed` + `module.mlp_head.*`), "timm"
    (`pos_embed`, `patch_embed.proj.weight`, `blocks.N.*`), "transformers-ast" (a transformers AST:
    `audio_spectrogram_transformer.embeddings...`) or "transformers" (a transformers DeiT/ViT:
    `[deit.|vit.]embeddings.patch_embeddings.projection.weight`, legacy or current layer names).
    """
    names = {_strip_module(name) for name in state_dict}
    if "v.pos_embed" in names and any(name.startswith("mlp_head.") for name in names):
        return "original-ast"
    if "pos_embed" in names and "patch_embed.proj.weight" in names:
        return "timm"
    if BASE_PREFIX + "embeddings.patch_embeddings.projection.weight" in names:
        return "transformers-ast"
    if any(name.endswith("embeddings.patch_embeddings.projection.weight") for name in names):
        return "transformers"
    raise ValueError(
        f"cannot recognise the checkpoint format from its keys (first ones: {sorted(names)[:6]}); expected a "
        "transformers DeiT/ViT (embeddings.patch_embeddings.projection.weight), a timm DeiT/ViT state dict "
        "(pos_embed, patch_embed.proj.weight, blocks.N.*) or a YuanGongND/ast checkpoint (module.v.*)."
    )


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # weights_only: a checkpoint is data, never code to run.
    return unwrap_checkpoint(torch.load(path, map_location="cpu", weights_only=True))


# A Hub repository id is `name` or `namespace/name` in these characters (huggingface_hub's
# `validate_repo_id`); anything else given as a source can only be a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?")
# Weights files the loaders read; a model repository id does not end like this.
_WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def looks_like_local_path(name_or_path) -> bool:
    """True when `name_or_path` can only be a file or folder, never a Hub repository id.

    That is a path starting with `/`, `~` or `.` (Hub names cannot start with a dot), one with
    more than one `/` or a character no Hub id holds, or one naming a weights file (`.pth`, ...).
    `name` and `namespace/name` could be either a relative folder or a Hub id.
    """
    text = str(name_or_path)
    return (
        text.startswith(("/", "~", "."))
        or os.path.isabs(text)
        or _HUB_ID.fullmatch(text) is None
        or text.endswith(_WEIGHTS_SUFFIXES)
    )


def _where(text: str) -> str:
    if text.startswith("~"):
        return " (~ is not expanded here; write the full path)"
    return "" if os.path.isabs(text) else f" (relative to {os.getcwd()})"


def check_source_exists(name_or_path) -> None:
    """Raise "no such file or folder" for a missing path that cannot be a Hub id.

    Without this, transformers hands `./missing` to huggingface_hub, which reports a bad "Repo id".
    """
    text = str(name_or_path)
    if looks_like_local_path(text) and not os.path.exists(text):
        raise FileNotFoundError(
            f"no such file or folder: {text}{_where(text)}; pass an existing model folder or weights file, or a "
            "Hub id (name or namespace/name)."
        )


@contextmanager
def source_not_found(name_or_path):
    """Around the first read of a source: report a missing local path as one.

    A missing path that cannot be a Hub id fails at once (`check_source_exists`). A missing `name`
    or `namespace/name` is tried on the Hub; when that fails too, the error says both that no such
    local file or folder exists and what the Hub lookup answered.
    """
    check_source_exists(name_or_path)
    try:
        yield
    except OSError as error:  # transformers and load_checkpoint report Hub failures (not found, offline) as OSError
        text = str(name_or_path)
        if os.path.exists(text):
            raise
        raise FileNotFoundError(
            f"no such file or folder: {text}{_where(text)}, and no Hub repository {text} could be read ({error}); "
            "pass an existing local folder or file, or the id of a Hub repository you can reach."
        ) from error


def load_checkpoint(name_or_path, **hub_kwargs) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Raw tensors and `config.json` (or None) of a weights file, a local model directory or a Hub id.

    A file is a state dict (`.safetensors`, or `.pth`/`.pt`/`.bin` read with `weights_only=True`).
    A directory or Hub id is resolved with transformers' `cached_file` (downloads and caches Hub
    files; `hub_kwargs` such as `revision`, `token`, `cache_dir` go there), trying
    `model.safetensors`, its sharded index, then `pytorch_model.bin` and its index. The tensors
    keep their on-disk names: no renaming by a model class. A missing path that cannot be a Hub id
    raises `FileNotFoundError` naming it.
    """
    check_source_exists(name_or_path)
    path = Path(name_or_path)
    if path.is_file():
        return _load_weights_file(path), None

    from transformers.utils.hub import cached_file

    def resolve(filename):
        return cached_file(str(name_or_path), filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)

    config_file = resolve("config.json")
    config_dict = json.loads(Path(config_file).read_text(encoding="utf-8")) if config_file else None
    for filename in (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ):
        file = resolve(filename)
        if file is None:
            continue
        if not filename.endswith(".index.json"):
            return _load_weights_file(Path(file)), config_dict
        weight_map = json.loads(Path(file).read_text(encoding="utf-8"))["weight_map"]
        state_dict = {}
        for shard in sorted(set(weight_map.values())):
            state_dict.update(_load_weights_file(Path(resolve(shard))))
        return state_dict, config_dict
    raise FileNotFoundError(
        f"{name_or_path} has no model.safetensors, pytorch_model.bin or sharded index; pass a transformers "
        "model directory or Hub id, or a state dict file (.pth / .safetensors)."
    )


# ---------------------------------------------------------------------------------------------
# Source naming -> hf-ast naming (before any shape adaptation)
# ---------------------------------------------------------------------------------------------

# transformers 5 renames ViT-family layers in memory (`layers.N.attention.q_proj`, `mlp.fc1`, ...);
# `save_pretrained` writes the legacy names, which are hf-ast's. Accept both.
_CURRENT_TO_LEGACY_LAYER = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
    "layernorm_before": "layernorm_before",
    "layernorm_after": "layernorm_after",
}
_LEGACY_LAYER_MODULES = set(_CURRENT_TO_LEGACY_LAYER.values())
_EMBEDDING_NAMES = {
    "embeddings.cls_token",
    "embeddings.distillation_token",
    "embeddings.position_embeddings",
    "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embeddings.projection.bias",
}


def legacy_vit_key(name: str) -> str | None:
    """A transformers ViT-family backbone name (prefix already stripped) -> legacy name, or None if not one.

    `layers.3.attention.q_proj.weight` -> `encoder.layer.3.attention.attention.query.weight`; legacy
    names (`encoder.layer.3.intermediate.dense.bias`), embeddings and the final `layernorm.*` are
    returned unchanged.
    """
    if name in _EMBEDDING_NAMES or name in ("layernorm.weight", "layernorm.bias"):
        return name
    match = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", name)
    if match and match.group(2) in _LEGACY_LAYER_MODULES:
        return name
    match = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if match and match.group(2) in _CURRENT_TO_LEGACY_LAYER:
        index, module, kind = match.groups()
        return f"encoder.layer.{index}.{_CURRENT_TO_LEGACY_LAYER[module]}.{kind}"
    return None


def _is_transformers_head(name: str) -> bool:
    # DeiT/ViT image-classification heads and the pooler of DeiTModel/ViTModel: unused by AST.
    heads = r"((deit|vit)\.)?(classifier|cls_classifier|distillation_classifier|pooler\.dense)\."
    return re.match(heads, name) is not None


def _backbone_from_transformers(state_dict) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """transformers DeiT/ViT tensors -> (hf-ast backbone names without prefix, dropped keys, unknown keys)."""
    backbone, dropped, unknown = {}, [], []
    for name, tensor in state_dict.items():
        if _is_transformers_head(name):
            dropped.append(name)
            continue
        stripped = re.sub(r"^(deit|vit)\.", "", name)
        target = legacy_vit_key(stripped)
        if target is None:
            unknown.append(name)
        elif target in backbone:
            raise ValueError(f"the checkpoint holds {target} twice (legacy and current names); keep one naming.")
        else:
            backbone[target] = tensor
    return backbone, dropped, unknown


# timm block names -> hf-ast layer names; `attn.qkv` is split separately.
_TIMM_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_TIMM_TOP = {
    "cls_token": "embeddings.cls_token",
    "dist_token": "embeddings.distillation_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


def _backbone_from_timm(state_dict, prefix: str = "") -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """timm ViT/DeiT tensors named `prefix + timm name` -> (hf-ast backbone names, dropped keys, unknown keys).

    The fused `attn.qkv` (3C, C) holds query, key and value in that order along dim 0 (timm reshapes
    its output to (B, N, 3, heads, head_dim)), so it splits into three (C, C) blocks.
    """
    backbone, dropped, unknown = {}, [], []
    for name, tensor in state_dict.items():
        if not name.startswith(prefix):
            continue
        short = name[len(prefix):]
        if short in _TIMM_TOP:
            backbone[_TIMM_TOP[short]] = tensor
            continue
        if re.fullmatch(r"(head|head_dist)\.(weight|bias)", short):
            dropped.append(name)  # ImageNet class and distillation heads
            continue
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", short)
        if match is None:
            unknown.append(name)
            continue
        index, module, kind = match.groups()
        layer = f"encoder.layer.{index}."
        if module == "attn.qkv":
            query, key, value = tensor.chunk(3, dim=0)
            backbone[f"{layer}attention.attention.query.{kind}"] = query
            backbone[f"{layer}attention.attention.key.{kind}"] = key
            backbone[f"{layer}attention.attention.value.{kind}"] = value
        elif module in _TIMM_BLOCK:
            backbone[f"{layer}{_TIMM_BLOCK[module]}.{kind}"] = tensor
        else:
            unknown.append(name)
    return backbone, dropped, unknown


def _raise_unknown(unknown: list[str], source: str):
    if unknown:
        raise ValueError(
            f"{len(unknown)} {source} tensors have no place in an AST and are not known to be unused: "
            f"{sorted(unknown)}. Dropping them would build a different network (e.g. timm layer scales, "
            "register tokens, qk-norm, fc_norm); convert a plain DeiT/ViT checkpoint instead."
        )


def _log_dropped(dropped: list[str], reason: str):
    if dropped:
        logger.info(f"dropped {len(dropped)} {reason}: {', '.join(sorted(dropped))}")


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
        fields = config.to_dict()
        for name in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "dtype"):
            fields.pop(name, None)
        changed = {f: (fields[f], v) for f, v in backbone_fields.items() if f in fields and fields[f] != v}
        if changed:
            logger.info(f"the checkpoint's backbone fields replace the config's (config, checkpoint): {changed}")
        if any(field in overrides for field in _LABEL_FIELDS):
            for field in _LABEL_FIELDS:
                fields.pop(field, None)
    fields.update(backbone_fields)
    fields.update(overrides)
    if fields.get("id2label") is not None:
        fields["id2label"] = {int(index): label for index, label in fields["id2label"].items()}
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


def expected_backbone_shapes(config: HfAstConfig) -> dict[str, torch.Size]:
    """`{name: shape}` of an `HfAstForAudioClassification` backbone for `config` (built on the meta device)."""
    with torch.device("meta"):
        model = HfAstModel(config)
    return {BASE_PREFIX + name: tensor.shape for name, tensor in model.state_dict().items()}


def _check_against_model(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str):
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"the {source} checkpoint does not fit the AST: missing {missing}, unexpected {unexpected}. "
            "Check that it is a complete DeiT/ViT (or AST) checkpoint and that the architecture fields match."
        )
    wrong = {name: (tuple(state_dict[name].shape), tuple(shape)) for name, shape in expected.items()
             if state_dict[name].shape != shape}
    if wrong:
        raise ValueError(f"the {source} checkpoint has shapes that do not fit the AST config (got, expected): {wrong}")


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
        backbone, dropped, unknown = _backbone_from_transformers(state_dict)
    elif source_format == "timm":
        backbone, dropped, unknown = _backbone_from_timm(state_dict)
    elif source_format in ("transformers-ast", "original-ast"):
        raise ValueError(
            f"this is an AST checkpoint ({source_format}), not an ImageNet DeiT/ViT; load it with "
            "hf_ast.convert (`hf-ast-convert transformers|original`), then HfAstForAudioClassification."
            "from_pretrained_with_geometry to change its geometry."
        )
    else:
        raise ValueError(f"source_format={source_format!r}; use 'transformers' or 'timm'.")
    _raise_unknown(unknown, source_format)
    _log_dropped(dropped, "image-classification tensors that AST does not use")

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
    _check_against_model(converted, expected_backbone_shapes(ast_config), source_format)
    return converted


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
    original_names = {_strip_module(name): name for name in state_dict}  # messages name the keys as saved
    state_dict = {_strip_module(name): tensor for name, tensor in state_dict.items()}
    if "v.pos_embed" not in state_dict:
        raise ValueError(
            "not a YuanGongND/ast checkpoint: no module.v.pos_embed; for an ImageNet DeiT/ViT use from_deit "
            "(`hf-ast-convert deit`)."
        )
    backbone, dropped, unknown = _backbone_from_timm(state_dict, prefix="v.")
    head = {}
    for name, tensor in state_dict.items():
        match = re.fullmatch(r"mlp_head\.([01])\.(weight|bias)", name)
        if match:
            head[f"classifier.{'layernorm' if match.group(1) == '0' else 'dense'}.{match.group(2)}"] = tensor
        elif not name.startswith("v."):
            unknown.append(name)
    _raise_unknown([original_names[name] for name in unknown], "reference AST")
    _log_dropped([original_names[name] for name in dropped], "unused ImageNet head tensors of the reference AST's DeiT")

    fields = backbone_fields_from_timm_state_dict(state_dict, num_attention_heads, prefix="v.")
    if "classifier.dense.weight" not in head:
        raise ValueError("the reference AST checkpoint has no module.mlp_head.1.weight (the classifier).")
    num_labels = head["classifier.dense.weight"].shape[0]
    labels = {}
    if id2label is not None:
        if len(id2label) != num_labels:
            raise ValueError(f"{len(id2label)} labels given, but the checkpoint's classifier has {num_labels} outputs.")
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
    _check_against_model(converted, expected, "reference AST")
    return converted, config


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
    "ast_from_deit",
    "backbone_fields_from_timm_state_dict",
    "backbone_fields_from_transformers_config",
    "build_ast_config",
    "check_channel_reduction",
    "check_source_exists",
    "deit_state_dict_to_ast",
    "detect_source_format",
    "expected_backbone_shapes",
    "legacy_vit_key",
    "load_checkpoint",
    "looks_like_local_path",
    "original_ast_state_dict_to_hf_ast",
    "reduce_patch_kernel",
    "source_not_found",
    "unwrap_checkpoint",
]
