"""Reading checkpoints, recognising their format, and mapping their tensor names to hf-ast's.

The shared first half of every conversion, as pure functions over state dicts (in the spirit of
timm's `checkpoint_filter_fn`):

    load_checkpoint(name_or_path)       -> (state dict as on disk, config.json or None)
    detect_source_format(state_dict)    -> "transformers" | "timm" | "transformers-ast" | "original-ast"
    legacy_vit_key(name)                -> the released ViT/AST name of a transformers 5 in-memory name
    backbone_from_transformers / backbone_from_timm -> (hf-ast backbone tensors, dropped keys, unknown keys)
    expected_backbone_shapes(config)    -> {name: shape} the converted tensors must have

A source tensor is either used, or dropped with a log line because it is known to be unused
(ImageNet classification heads and the pooler); anything else raises, because silently ignoring it
would build a different network.
"""

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers.utils import logging

from ..configuration_hf_ast import HfAstConfig
from ..modeling_hf_ast import HfAstModel

logger = logging.get_logger(__name__)

BASE_PREFIX = HfAstModel.base_model_prefix + "."  # "audio_spectrogram_transformer."
# What `PretrainedConfig.to_dict()` adds about the saving run rather than the model: dropped when a
# config's fields are carried into another config class.
BOOKKEEPING_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "dtype")


def config_fields(config_dict: dict, names=None) -> dict:
    """The model fields of a config dict: bookkeeping keys dropped, and only `names` when given."""
    return {
        name: value for name, value in config_dict.items()
        if name not in BOOKKEEPING_KEYS and (names is None or name in names)
    }


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


def strip_module(name: str) -> str:
    # nn.DataParallel (the reference training script) prefixes every name with "module.".
    return name[len("module."):] if name.startswith("module.") else name


def detect_source_format(state_dict: dict[str, torch.Tensor]) -> str:
    """Recognise a checkpoint by telltale keys.

    Returns "original-ast" (YuanGongND/ast: `module.v.pos_embed` + `module.mlp_head.*`), "timm"
    (`pos_embed`, `patch_embed.proj.weight`, `blocks.N.*`), "transformers-ast" (a transformers AST:
    `audio_spectrogram_transformer.embeddings...`) or "transformers" (a transformers DeiT/ViT:
    `[deit.|vit.]embeddings.patch_embeddings.projection.weight`, legacy or current layer names).
    """
    names = {strip_module(name) for name in state_dict}
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


def is_weights_file(name_or_path) -> bool:
    """True when `name_or_path` names a weights file (`.pth`, `.safetensors`, ...), not a model folder or repo."""
    return str(name_or_path).endswith(_WEIGHTS_SUFFIXES)


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
        or is_weights_file(text)
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


def backbone_from_transformers(state_dict) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
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


def backbone_from_timm(state_dict, prefix: str = "") -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
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


def raise_unknown(unknown: list[str], source: str):
    if unknown:
        raise ValueError(
            f"{len(unknown)} {source} tensors have no place in an AST and are not known to be unused: "
            f"{sorted(unknown)}. Dropping them would build a different network (e.g. timm layer scales, "
            "register tokens, qk-norm, fc_norm); convert a plain DeiT/ViT checkpoint instead."
        )


def log_dropped(dropped: list[str], reason: str):
    if dropped:
        logger.info(f"dropped {len(dropped)} {reason}: {', '.join(sorted(dropped))}")

def expected_backbone_shapes(config: HfAstConfig) -> dict[str, torch.Size]:
    """`{name: shape}` of an `HfAstForAudioClassification` backbone for `config` (built on the meta device)."""
    with torch.device("meta"):
        model = HfAstModel(config)
    return {BASE_PREFIX + name: tensor.shape for name, tensor in model.state_dict().items()}


def check_against_model(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str):
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


__all__ = [
    "BASE_PREFIX",
    "backbone_from_timm",
    "backbone_from_transformers",
    "check_against_model",
    "check_source_exists",
    "config_fields",
    "detect_source_format",
    "expected_backbone_shapes",
    "is_weights_file",
    "legacy_vit_key",
    "load_checkpoint",
    "looks_like_local_path",
    "source_not_found",
    "strip_module",
    "unwrap_checkpoint",
]
