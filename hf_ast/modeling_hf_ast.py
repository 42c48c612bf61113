"""Audio Spectrogram Transformer (Gong, Chung & Glass 2021, arXiv 2104.01778).

Read top to bottom in build order: position-grid helpers, embeddings, attention, MLP, layer,
encoder, PreTrainedModel, base model, head; last, how Linear layers pick their CPU kernel at
inference (`linear`, oneDNN), which attention and MLP call. Parameter names are those of the
released transformers AST checkpoints (`MIT/ast-finetuned-audioset-*`), so they load with no renaming.

This file is copied next to every saved model for `trust_remote_code=True`; it imports nothing
from the `hf_ast` package except through relative imports of the files saved beside it.
"""

import copy
import functools
import os
import platform
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init  # leaves tensors loaded from a checkpoint untouched
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple

from .configuration_hf_ast import HfAstConfig, id2label_with_int_keys, patch_grid

logger = logging.get_logger(__name__)

NUM_PREFIX_TOKENS = 2  # cls + distillation, as in DeiT


# ---------------------------------------------------------------------------------------------
# Position grid
# ---------------------------------------------------------------------------------------------


def resize_position_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Re-grid `(C, H, W)` position embeddings to `(C, f, t)` by the reference implementation's rule.

    Time axis first: keep the centre columns `[W//2 - t//2, W//2 - t//2 + t)` when `t <= W`, else
    bilinear interpolation (align_corners=False) to `(H, t)`; then frequency the same way with
    rows. This is YuanGongND/ast's `ASTModel.__init__` rule, written for any grid and stride.
    """
    f, t = size
    _, height, width = grid.shape
    grid = grid.unsqueeze(0)  # (1, C, H, W)
    if t <= width:
        start = width // 2 - t // 2
        grid = grid[:, :, :, start : start + t]
    else:
        grid = nn.functional.interpolate(grid, size=(height, t), mode="bilinear", align_corners=False)
    if f <= height:
        start = height // 2 - f // 2
        grid = grid[:, :, start : start + f, :]
    else:
        grid = nn.functional.interpolate(grid, size=(f, t), mode="bilinear", align_corners=False)
    return grid.squeeze(0)


def regrid_position_embeddings(
    position_embeddings: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """`(1, 2 + F*T, C)` position embeddings on grid `old_grid=(F, T)` -> `(1, 2 + f*t, C)` on `new_grid`.

    The cls and distillation embeddings stay in front unchanged; the patch part goes through
    `resize_position_grid` (centre cut or bilinear), flattened frequency-major like the patches.
    """
    prefix = position_embeddings[:, :NUM_PREFIX_TOKENS]
    old_f, old_t = old_grid
    channels = position_embeddings.shape[-1]
    if position_embeddings.shape[1] != NUM_PREFIX_TOKENS + old_f * old_t:
        raise ValueError(
            f"position embeddings have {position_embeddings.shape[1]} rows, expected {NUM_PREFIX_TOKENS} prefix "
            f"tokens + {old_f}x{old_t} patches; the checkpoint's geometry does not match its config."
        )
    grid = position_embeddings[0, NUM_PREFIX_TOKENS:].reshape(old_f, old_t, channels).permute(2, 0, 1)
    grid = resize_position_grid(grid, new_grid)  # (C, f, t)
    patches = grid.permute(1, 2, 0).reshape(1, -1, channels)  # (1, f*t, C), frequency-major
    return torch.cat([prefix, patches], dim=1)


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


class HfAstPatchEmbeddings(nn.Module):
    """`(B, T, F)` spectrogram -> `(B, f*t, C)` patch embeddings, frequency-major (index = f_idx * t + t_idx)."""

    def __init__(self, config: HfAstConfig):
        super().__init__()
        self.projection = nn.Conv2d(
            1,
            config.hidden_size,
            kernel_size=(config.patch_size, config.patch_size),
            stride=(config.frequency_stride, config.time_stride),
        )

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        input_values = input_values.unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)
        projection = self.projection
        if _bf16_computes_in_fp32(projection, input_values):
            # A CPU without oneDNN bf16 kernels (AVX2-only): torch's bf16 fallback, aten::_slow_conv2d_forward,
            # takes 160 ms at the base geometry and fp32 12 ms (one thread). fp32, rounded to bf16 once.
            bias = None if projection.bias is None else projection.bias.float()
            embeddings = nn.functional.conv2d(
                input_values.float(), projection.weight.float(), bias,
                projection.stride, projection.padding, projection.dilation, projection.groups,
            ).to(input_values.dtype)
        else:
            embeddings = projection(input_values)
        return embeddings.flatten(2).transpose(1, 2)  # (B, f*t, C)


class HfAstEmbeddings(nn.Module):
    """Patch embeddings + cls and distillation tokens + learned position embeddings."""

    def __init__(self, config: HfAstConfig):
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = HfAstPatchEmbeddings(config)
        f, t = config.patch_grid
        self.position_embeddings = nn.Parameter(torch.zeros(1, NUM_PREFIX_TOKENS + f * t, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def position_embeddings_for(self, time_patches: int, interpolate_pos_encoding: bool) -> torch.Tensor:
        """Position embeddings for an input of `time_patches` patch columns.

        Shorter than the trained grid: the leading columns, i.e. the positions these patches had
        in the end-padded input the model was trained on. Longer: only with
        `interpolate_pos_encoding=True`, bilinear over the time axis of the trained grid.
        """
        f, t = self.config.patch_grid
        if time_patches > t and not interpolate_pos_encoding:
            raise ValueError(
                f"input has {time_patches} patch columns but the model was trained on {t} "
                f"(max_length={self.config.max_length} frames). Truncate the input to max_length frames "
                "(the feature extractor's default), classify long audio in windows, or pass "
                "interpolate_pos_encoding=True to stretch the trained positions over the longer input."
            )
        if time_patches == t and not torch.compiler.is_compiling():
            return self.position_embeddings  # the trained grid itself: no copy
        prefix = self.position_embeddings[:, :NUM_PREFIX_TOKENS]
        grid = self.position_embeddings[:, NUM_PREFIX_TOKENS:].reshape(1, f, t, -1)  # (1, f, t, C)
        if time_patches <= t:
            # Under torch.export/compile every length up to t takes this one path, so the time axis
            # stays symbolic (a shortcut at time_patches == t would specialise the graph to it).
            grid = grid[:, :, :time_patches]
        else:
            grid = nn.functional.interpolate(
                grid.permute(0, 3, 1, 2), size=(f, time_patches), mode="bilinear", align_corners=False
            ).permute(0, 2, 3, 1)
        return torch.cat([prefix, grid.reshape(1, f * time_patches, -1)], dim=1)

    def forward(self, input_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        batch_size = input_values.shape[0]
        _, time_patches = patch_grid(
            input_values.shape[2], input_values.shape[1], self.config.patch_size,
            self.config.frequency_stride, self.config.time_stride,
        )
        embeddings = self.patch_embeddings(input_values)  # (B, f*t, C)
        cls_tokens = self.cls_token.expand(batch_size, -1, -1)
        distillation_tokens = self.distillation_token.expand(batch_size, -1, -1)
        embeddings = torch.cat((cls_tokens, distillation_tokens, embeddings), dim=1)  # (B, 2 + f*t, C)
        embeddings = embeddings + self.position_embeddings_for(time_patches, interpolate_pos_encoding)
        return self.dropout(embeddings)


# ---------------------------------------------------------------------------------------------
# Attention, MLP, layer, encoder
# ---------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, heads, L, L)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, L, heads, D)
    return attn_output, attn_weights


class HfAstSelfAttention(nn.Module):
    def __init__(self, config: HfAstConfig):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout_prob = config.attention_probs_dropout_prob
        # transformers' sdpa wrapper treats a module without this flag as causal.
        self.is_causal = False
        self.query = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.key = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.value = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        packed_lengths: list[int] | None = None,
        **kwargs,
    ):
        batch_size, seq_length, _ = hidden_states.shape
        shape = (batch_size, seq_length, self.num_attention_heads, self.head_dim)
        query = linear(self.query, hidden_states).view(shape).transpose(1, 2)  # (B, heads, L, D)
        key = linear(self.key, hidden_states).view(shape).transpose(1, 2)
        value = linear(self.value, hidden_states).view(shape).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attend = functools.partial(
            attention_interface,
            self,
            is_causal=False,
            scaling=self.scaling,
            dropout=self.dropout_prob if self.training else 0.0,
            **kwargs,
        )
        if packed_lengths is None:
            context, attn_weights = attend(query, key, value, attention_mask)
            return context.reshape(batch_size, seq_length, -1), attn_weights  # (B, L, C)
        # Packed clips (1, N = sum of lengths, C): each clip attends only to its own tokens, one
        # unmasked attention call per clip, so no FLOP is spent on padding.
        contexts = [
            attend(q, k, v, None)[0]  # (1, L_i, heads, D)
            for q, k, v in zip(*(t.split(packed_lengths, dim=2) for t in (query, key, value)))
        ]
        return torch.cat(contexts, dim=1).reshape(batch_size, seq_length, -1), None  # (1, N, C)


def dense_dropout_residual(dense: nn.Linear, dropout: nn.Dropout, hidden_states, residual) -> torch.Tensor:
    """`dropout(dense(hidden_states)) + residual`, fused into the matmul when dropout is inactive."""
    if dropout.training and dropout.p > 0:
        return dropout(dense(hidden_states)) + residual
    return linear(dense, hidden_states, residual=residual)


class HfAstSelfOutput(nn.Module):
    """Attention output projection plus the pre-norm residual (the block's input, before the norm)."""

    def __init__(self, config: HfAstConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return dense_dropout_residual(self.dense, self.dropout, hidden_states, input_tensor)


class HfAstAttention(nn.Module):
    def __init__(self, config: HfAstConfig):
        super().__init__()
        self.attention = HfAstSelfAttention(config)
        self.output = HfAstSelfOutput(config)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor, attention_mask=None, **kwargs):
        context, attn_weights = self.attention(hidden_states, attention_mask, **kwargs)
        return self.output(context, residual), attn_weights


class HfAstIntermediate(nn.Module):
    def __init__(self, config: HfAstConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]
        self.fuse_gelu = config.hidden_act == "gelu"  # exact (erf) GELU, as ViT/DeiT/AST use

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.fuse_gelu:
            return linear(self.dense, hidden_states, activation="gelu")
        return self.intermediate_act_fn(self.dense(hidden_states))


class HfAstOutput(nn.Module):
    def __init__(self, config: HfAstConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return dense_dropout_residual(self.dense, self.dropout, hidden_states, input_tensor)


class HfAstLayer(GradientCheckpointingLayer):
    """Pre-norm ViT block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: HfAstConfig):
        super().__init__()
        self.attention = HfAstAttention(config)
        self.intermediate = HfAstIntermediate(config)
        self.output = HfAstOutput(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        hidden_states, attn_weights = self.attention(
            self.layernorm_before(hidden_states), hidden_states, attention_mask, **kwargs
        )  # residual added
        layer_output = self.output(self.intermediate(self.layernorm_after(hidden_states)), hidden_states)
        return layer_output, attn_weights


class HfAstEncoder(nn.Module):
    def __init__(self, config: HfAstConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([HfAstLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        **kwargs,
    ):
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer_module in self.layer:
            hidden_states, attn_weights = layer_module(hidden_states, attention_mask, **kwargs)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        return hidden_states, all_hidden_states, all_attentions


def pack_tokens(hidden_states: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """`(B, L, C)` padded tokens and a `(B, L)` prefix mask -> `(1, N, C)` kept tokens of all clips, lengths."""
    lengths = token_mask.sum(dim=1).tolist()
    return hidden_states[token_mask].unsqueeze(0), lengths  # row-major: clip by clip, in token order


def unpack_tokens(packed: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_tokens`: `(1, N, C)` -> `(B, L, C)`, zeros at padded positions."""
    out = packed.new_zeros(*token_mask.shape, packed.shape[-1])
    return out.masked_scatter(token_mask[..., None], packed[0])


def patchout_keep_mask(
    batch_size: int,
    grid: tuple[int, int],
    time_columns: int = 0,
    frequency_rows: int = 0,
    random_fraction: float = 0.0,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The tokens a patchout training step keeps: `(B, 2 + f*t)` bool.

    Structured patchout (PaSST: Koutini et al. 2021, arXiv 2110.05069) drops `time_columns` whole
    time columns and `frequency_rows` whole frequency rows of the `f x t` patch grid, the same ones
    for every clip of the batch as PaSST does, so an unpadded batch stays rectangular. Unstructured
    patchout then drops `int(random_fraction * n_i)` of clip i's `n_i` remaining patches at random.
    `valid` `(B, 2 + f*t)` (the padding keep mask, token-level) marks each clip's real tokens:
    padding is never kept, and a clip whose real patches were all dropped keeps its first real one.
    cls and distillation are kept (unless `valid` hides them). Draws come from `generator` (CPU),
    or torch's global generator when None.
    """
    f, t = grid
    if not 0 <= time_columns < t or not 0 <= frequency_rows < f or not 0.0 <= random_fraction < 1.0:
        raise ValueError(
            f"patchout drops {time_columns} of {t} time columns, {frequency_rows} of {f} frequency rows and a "
            f"fraction {random_fraction} of the rest; each must leave patches: 0 <= patchout_time < {t}, "
            f"0 <= patchout_freq < {f}, 0 <= patchout_random < 1."
        )
    grid_keep = torch.ones(f, t, dtype=torch.bool)
    if time_columns:
        grid_keep[:, torch.randperm(t, generator=generator)[:time_columns]] = False
    if frequency_rows:
        grid_keep[torch.randperm(f, generator=generator)[:frequency_rows]] = False
    keep = grid_keep.reshape(1, f * t).expand(batch_size, -1).to(device)  # (B, f*t), frequency-major
    real = None if valid is None else valid[:, NUM_PREFIX_TOKENS:].to(device=device, dtype=torch.bool)
    if real is not None:
        keep = keep & real
    if random_fraction:
        scores = torch.rand(batch_size, f * t, generator=generator).to(keep.device)
        scores = scores.masked_fill(~keep, 2.0)  # already dropped: ranked last, never among the `drop` lowest
        ranks = scores.argsort(dim=1).argsort(dim=1)  # (B, f*t): each patch's rank among its clip's kept ones
        drop = (keep.sum(dim=1) * random_fraction).long()  # (B,)
        keep = keep & (ranks >= drop[:, None])
    empty = ~keep.any(dim=1)  # (B,)
    if bool(empty.any()):  # a clip that lost every real patch keeps its first one
        if real is not None:
            first = real & (real.cumsum(dim=1) == 1)
        else:
            first = torch.zeros_like(keep)
            first[:, 0] = True
        keep = keep | (first & empty[:, None])
    if valid is None:
        prefix = torch.ones(batch_size, NUM_PREFIX_TOKENS, dtype=torch.bool, device=keep.device)
    else:
        prefix = valid[:, :NUM_PREFIX_TOKENS].to(device=keep.device, dtype=torch.bool)
    return torch.cat([prefix, keep], dim=1)


def patchout_counts(config: HfAstConfig, grid: tuple[int, int]) -> tuple[int, int]:
    """`(time_columns, frequency_rows)` to drop from an input's `grid`: the config's counts, which are set on
    the trained grid, scaled to the input's columns and rows (same fraction) and leaving at least one."""
    f, t = grid
    trained_f, trained_t = config.patch_grid
    time_columns = round(config.patchout_time * t / trained_t)  # exactly the count itself on the trained grid
    frequency_rows = round(config.patchout_freq * f / trained_f)
    return min(time_columns, t - 1), min(frequency_rows, f - 1)


# ---------------------------------------------------------------------------------------------
# Pretrained model, base model, head
# ---------------------------------------------------------------------------------------------


def _frames_of_token_mask(mask: torch.Tensor, f: int, t: int, config: HfAstConfig) -> list[int] | None:
    """Frame counts whose frame-level masks equal a token-level `(B, 2 + f*t)` mask, or None.

    Only a mask that keeps cls, distillation and the first `k >= 1` time columns of every
    frequency row has one: the frames `[0, (k - 1) * time_stride + patch_size)`.
    """
    patches = mask[:, NUM_PREFIX_TOKENS:].reshape(-1, f, t)  # (B, f, t)
    columns = patches[:, 0]  # (B, t)
    kept = columns.sum(dim=-1)  # (B,)
    if not (
        bool(mask[:, :NUM_PREFIX_TOKENS].all())
        and torch.equal(patches, columns[:, None].expand_as(patches))
        and torch.equal(columns, torch.arange(t, device=mask.device) < kept[:, None])
        and bool((kept > 0).all())
    ):
        return None
    return [(k - 1) * config.time_stride + config.patch_size for k in kept.tolist()]


def patch_attention_mask(
    attention_mask: torch.Tensor, config: HfAstConfig, num_frames: int, num_mel_bins: int
) -> torch.Tensor:
    """An attention mask, frame-level `(B, T)` or token-level `(B, 2 + f*t)` -> token-level `(B, 2 + f*t)` bool.

    Frame-level (the feature extractor's, `return_attention_mask=True`): valid frames first, then
    padding. A patch is kept when all its frames are valid (a patch column starting at frame
    `j * stride` ends at `j * stride + patch_size`); cls and distillation are always kept. At least
    one patch column stays, as a clip shorter than one patch is padded to one patch when run alone.

    Token-level (what transformers' `ASTModel` takes: cls, distillation, then the patches
    frequency-major): used as given, any pattern. The two are told apart by length; where `T`
    equals `2 + f*t`, a valid frame-level mask is read as one, and any other mask is refused.
    Values must be 0 or 1 (any dtype).
    """
    f, t = patch_grid(num_mel_bins, num_frames, config.patch_size, config.frequency_stride, config.time_stride)
    num_tokens = NUM_PREFIX_TOKENS + f * t
    if attention_mask.dim() != 2 or attention_mask.shape[1] not in (num_frames, num_tokens):
        batch = attention_mask.shape[0] if attention_mask.dim() else "batch"
        patches_only = attention_mask.dim() == 2 and attention_mask.shape[1] == f * t
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected ({batch}, {num_frames}): the "
            "frame-level mask that the feature extractor returns with return_attention_mask=True, or "
            f"({batch}, {num_tokens}): a token-level mask as transformers' ASTModel takes (cls, distillation, then "
            f"{f}x{t} patches frequency-major)."
            + (
                " This one has an entry per patch and none for the cls and distillation tokens: put ones for "
                f"them in front, torch.cat([torch.ones({batch}, 2, dtype=mask.dtype), mask], dim=1)."
                if patches_only else ""
            )
        )
    if attention_mask.dtype != torch.bool:
        outside = (attention_mask != 0) & (attention_mask != 1)
        if bool(outside.any()):
            raise ValueError(
                f"attention_mask holds values other than 0 and 1 ({attention_mask[outside][0].item():g}); it marks "
                "real audio with 1 and padding with 0, and a soft or scaled mask has no meaning here: threshold "
                "it, e.g. (mask > 0.5).long()."
            )
    mask = attention_mask.bool()
    valid_frames = mask.sum(dim=-1)  # (B,)
    positions = torch.arange(mask.shape[1], device=mask.device)
    is_prefix = torch.equal(mask, positions < valid_frames[:, None])
    if mask.shape[1] == num_tokens and not (num_tokens == num_frames and is_prefix):
        if num_tokens != num_frames:
            return mask  # token-level, as transformers' ASTModel reads it
        frames = _frames_of_token_mask(mask, f, t, config)
        convert = (
            f"This one keeps whole time columns; its frame-level equivalent is "
            f"(torch.arange({num_frames}) < torch.tensor({[[n] for n in frames]})).long()."
            if frames is not None else
            f"Keeping the first k patch columns of a clip is the frame-level mask of frames "
            f"[0, (k - 1) * {config.time_stride} + {config.patch_size})."
        )
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)}, and {num_frames} frames make {num_tokens} tokens "
            f"({NUM_PREFIX_TOKENS} + {f}x{t} patches), so it could be frame-level (the feature extractor's) or "
            "token-level (transformers' ASTModel's). It is not a valid frame-level mask (it has holes or leading "
            f"padding), and at this length a token-level one cannot be told apart: pass it frame-level. {convert}"
        )
    if not is_prefix:
        raise ValueError(
            "attention_mask must mark each clip's valid frames at the start and padding at the end "
            "(the feature extractor's frame-level mask); got a mask with holes or leading padding."
        )
    column_end = torch.arange(t, device=mask.device) * config.time_stride + config.patch_size  # (t,)
    columns = column_end[None, :] <= valid_frames[:, None]  # (B, t)
    columns[:, 0] = True
    patches = columns[:, None, :].expand(-1, f, -1).reshape(mask.shape[0], f * t)  # (B, f*t), frequency-major
    prefix = torch.ones(mask.shape[0], NUM_PREFIX_TOKENS, dtype=torch.bool, device=mask.device)
    return torch.cat([prefix, patches], dim=1)


class HfAstPreTrainedModel(PreTrainedModel):
    config_class = HfAstConfig
    config: HfAstConfig
    base_model_prefix = "audio_spectrogram_transformer"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["HfAstEmbeddings", "HfAstLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The loss is a per-batch mean that ignores `num_items_in_batch`: without this, Trainer (seeing
    # forward(**kwargs)) would pass it in and skip its own division by gradient_accumulation_steps.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, HfAstEmbeddings):
            # timm's DeiT init (the paper's backbone); transformers' AST zero-initialises these.
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
            init.trunc_normal_(module.distillation_token, mean=0.0, std=std)
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Both Auto entries, whichever class is saved: `AutoModel` on a saved classifier gives its encoder.
        module = type(self).__module__.split(".")[-1]
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoConfig": f"{type(self.config).__module__.split('.')[-1]}.{type(self.config).__name__}",
            "AutoModel": f"{module}.HfAstModel",
            "AutoModelForAudioClassification": f"{module}.HfAstForAudioClassification",
        }
        if isinstance(self, HfAstForAudioClassification):
            # Declares pipeline("audio-classification-long"). Being a relative import of this file, it
            # also makes transformers copy long_audio.py next to the model with the other code files.
            from .long_audio import custom_pipelines_entry

            self.config.custom_pipelines = {
                **(getattr(self.config, "custom_pipelines", None) or {}), **custom_pipelines_entry()
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained_with_geometry(
        cls,
        pretrained_model_name_or_path,
        *,
        max_length: int | None = None,
        num_mel_bins: int | None = None,
        frequency_stride: int | None = None,
        time_stride: int | None = None,
        id2label: dict | None = None,
        problem_type: str | None = None,
        **kwargs,
    ):
        """Load a trained AST and change its geometry for fine-tuning (a new clip length, mel bins or stride).

        The position embeddings are re-gridded by the reference rule (`resize_position_grid`:
        centre cut when the new grid is smaller, bilinear when larger), never re-initialised; the
        patch projection, the encoder and the tokens are kept. The classification head is
        re-initialised only when `id2label` differs from the checkpoint's labels. This is not
        padding-free inference (see `HfAstModel.forward`): it builds a model for a new input size.
        Other `kwargs` go to `from_pretrained` (revision, dtype, attn_implementation, ...).
        """
        source = cls.from_pretrained(pretrained_model_name_or_path, **kwargs)
        config = copy.deepcopy(source.config)
        overrides = {
            "max_length": max_length,
            "num_mel_bins": num_mel_bins,
            "frequency_stride": frequency_stride,
            "time_stride": time_stride,
        }
        for name, value in overrides.items():
            if value is not None:
                setattr(config, name, value)
        config._check_geometry()
        new_head = False
        if id2label is not None:
            id2label = id2label_with_int_keys(id2label)
            new_head = id2label != id2label_with_int_keys(source.config.id2label)
            config.id2label = id2label
            config.label2id = {label: index for index, label in id2label.items()}
        if problem_type is not None:
            config.problem_type = problem_type

        target = cls(config).to(dtype=source.dtype)
        state = source.state_dict()
        old_grid, new_grid = source.config.patch_grid, config.patch_grid
        for name in list(state):
            if name.endswith("embeddings.position_embeddings") and old_grid != new_grid:
                state[name] = regrid_position_embeddings(state[name], old_grid, new_grid)
                logger.info(f"re-gridded {name} from {old_grid} to {new_grid} patches (centre cut / bilinear)")
            elif new_head and name.startswith("classifier."):
                del state[name]
        missing, unexpected = target.load_state_dict(state, strict=False)
        if unexpected or any(not (new_head and name.startswith("classifier.")) for name in missing):
            raise RuntimeError(f"geometry change left missing keys {missing} and unexpected keys {unexpected}")
        if new_head:
            logger.warning(
                f"labels differ from the checkpoint's: the classification head is new ({config.num_labels} labels) "
                "and must be trained."
            )
        return target


class HfAstModel(HfAstPreTrainedModel):
    """The AST encoder. `pooler_output` is the clip embedding: the mean of the final cls and distillation states."""

    def __init__(self, config: HfAstConfig):
        super().__init__(config)
        self.config = config
        self.embeddings = HfAstEmbeddings(config)
        self.encoder = HfAstEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Patchout's draws (training only): None takes torch's global generator. A distributed run whose
        # processes share one seed gives each its own, so that they drop different patches.
        self.patchout_generator: torch.Generator | None = None
        self.post_init()

    def get_input_embeddings(self) -> HfAstPatchEmbeddings:
        return self.embeddings.patch_embeddings

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        padding_free: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        input_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_mel_bins)`):
            Normalised log-mel filterbanks from [`HfAstFeatureExtractor`]. `num_frames` may be smaller
            than `config.max_length` (padding-free inference: the patches take the leading columns of
            the trained position grid, where an end-padded input would have put them); larger only
            with `interpolate_pos_encoding=True`.
        attention_mask (`torch.LongTensor` of shape `(batch_size, num_frames)`, *optional*):
            The extractor's frame-level mask (1 = real audio). Patches that overlap padding are
            dropped, so each clip of a padded batch gets the output it gets alone. The kept tokens of
            all clips run packed in one sequence (attention per clip), so padding costs no compute;
            `last_hidden_state` holds zeros at the dropped positions. With `output_attentions=True`
            the padded layout and a mask are used instead. A token-level mask of shape
            `(batch_size, 2 + f*t)`, as transformers' `ASTModel` takes, is accepted too, with its
            semantics (masked tokens are hidden as keys); see `patch_attention_mask`. Values must be
            0 or 1.
        interpolate_pos_encoding (`bool`, defaults to `False`):
            Allow inputs longer than `max_length` by bilinear interpolation of the time positions.
        padding_free (`bool`, *optional*):
            Whether a frame-level `attention_mask` removes the padding. Default: as the model was
            trained (`config.trained_padding`): a model trained on padded inputs ignores the mask and
            attends to the padding as in training (so `pipeline()` serves it like its evaluation, even
            with an extractor that returns masks); pass `True` to opt in to padding-free inference.

        Patchout (`config.patchout_time`, `patchout_freq`, `patchout_random`; PaSST) drops patches in
        `model.train()` only: after the position embeddings are added (each kept patch keeps its own
        position), before the encoder; cls and distillation are always kept, padding never. In training
        `last_hidden_state` (and `hidden_states`) then hold zeros at the dropped positions; with
        `output_attentions=True` the dropped patches are hidden as keys in the padded layout instead.
        Draws come from `self.patchout_generator`, or torch's global generator when None.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        self._check_inputs(input_values, attention_mask, output_attentions)
        input_values = input_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)
        embedding_output = self.embeddings(input_values, interpolate_pos_encoding=interpolate_pos_encoding)
        token_mask, keep = self._token_layout(attention_mask, input_values, embedding_output, padding_free,
                                              output_attentions)
        if keep is not None:
            lengths = keep.sum(dim=1)  # (B,)
            if self._patchout_active() and bool((lengths == lengths[0]).all()):
                # Patchout keeping as many tokens in every clip (an unpadded batch): a dense (B, n, C) batch,
                # plain attention, no per-clip calls.
                embedding_output = embedding_output[keep].view(keep.shape[0], int(lengths[0]), -1)  # (B, n, C)
            else:
                # Padding-free batch: the kept tokens of all clips in one (1, N, C) sequence. Linear
                # layers see no padding; attention runs per clip. Each clip computes what it does alone.
                embedding_output, kwargs["packed_lengths"] = pack_tokens(embedding_output, keep)
        hidden_states, all_hidden_states, all_attentions = self.encoder(
            embedding_output,
            token_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        sequence_output = self.layernorm(hidden_states)  # (B, 2 + f*t, C), or (1, N, C) packed
        if keep is not None:  # back to (B, 2 + f*t, C), zeros where the padding or the dropped patches were
            sequence_output = unpack_tokens(sequence_output.reshape(1, -1, sequence_output.shape[-1]), keep)
            if all_hidden_states is not None:
                all_hidden_states = tuple(unpack_tokens(h.reshape(1, -1, h.shape[-1]), keep)
                                          for h in all_hidden_states)
        pooled_output = (sequence_output[:, 0] + sequence_output[:, 1]) / 2  # mean of cls and distillation
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )

    def _check_inputs(self, input_values, attention_mask, output_attentions: bool) -> None:
        """Refuse inputs the forward cannot run, with the fix, before they fail deep inside a conv or a reshape."""
        if output_attentions and self.config._attn_implementation not in (None, "eager"):
            raise ValueError(
                f"output_attentions=True needs eager attention, but this model uses "
                f"'{self.config._attn_implementation}'; load it with attn_implementation=\"eager\" or call "
                "model.set_attn_implementation(\"eager\")."
            )
        for name, value in (("input_values", input_values), ("attention_mask", attention_mask)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"{name} is a {type(value).__module__}.{type(value).__name__}; pass a torch tensor: "
                    "HfAstFeatureExtractor(..., return_tensors=\"pt\"), or torch.from_numpy(array)."
                )
        if input_values.dim() != 3 or input_values.shape[2] != self.config.num_mel_bins:
            raise ValueError(
                f"input_values has shape {tuple(input_values.shape)}; expected (batch, frames, "
                f"{self.config.num_mel_bins}) log-mel filterbanks from HfAstFeatureExtractor."
            )
        if input_values.shape[0] == 0:
            raise ValueError("input_values is a batch of 0 clips; pass at least one clip, or skip the call.")
        if input_values.shape[1] < self.config.patch_size:
            raise ValueError(
                f"input_values has {input_values.shape[1]} frames, fewer than one patch ({self.config.patch_size}); "
                "pad the input to at least one patch (the feature extractor does this)."
            )
        mask_rows = attention_mask.shape[0] if attention_mask is not None and attention_mask.dim() > 0 else None
        if mask_rows is not None and mask_rows != input_values.shape[0]:
            raise ValueError(
                f"attention_mask has {attention_mask.shape[0]} rows but input_values has {input_values.shape[0]} "
                "clips; pass the mask that came with these input_values, one row per clip."
            )

    def _token_layout(self, attention_mask, input_values, embedding_output, padding_free, output_attentions):
        """How the tokens run through the encoder: `(token_mask, keep)`.

        - `(None, None)`: all tokens, unmasked (no mask, nothing padded, or a frame-level mask on a
          model trained padded and not asked for `padding_free`: served as trained, padding and all).
        - `(None, keep)`: packed, padding-free: only the tokens `keep` `(B, 2 + f*t)` marks, all clips
          in one sequence, attention per clip.
        - `(token_mask, None)`: the padded layout with a mask for the attention backend, when attention
          maps are asked for or a token-level mask hides cls or distillation (masked as keys only,
          their own outputs still computed, as transformers does).

        In training with patchout configured, `keep` is also what patchout keeps (`patchout_keep_mask`,
        padding never kept), and a batch whose clips keep equally many tokens runs dense `(B, n, C)`.
        """
        keep = self._padding_keep(attention_mask, input_values, padding_free)
        if self._patchout_active():  # training: the patches this step keeps, padding never among them
            grid = patch_grid(input_values.shape[2], input_values.shape[1], self.config.patch_size,
                              self.config.frequency_stride, self.config.time_stride)
            time_columns, frequency_rows = patchout_counts(self.config, grid)
            keep = patchout_keep_mask(
                input_values.shape[0], grid, time_columns, frequency_rows, self.config.patchout_random, valid=keep,
                generator=self.patchout_generator, device=embedding_output.device,
            )
        if keep is None or bool(keep.all()):
            return None, None
        if output_attentions or not bool(keep[:, :NUM_PREFIX_TOKENS].all()):
            return create_bidirectional_mask(
                config=self.config, inputs_embeds=embedding_output, attention_mask=keep.long()
            ), None
        return None, keep

    def _padding_keep(self, attention_mask, input_values, padding_free) -> torch.Tensor | None:
        """The token-level `(B, 2 + f*t)` keep mask `attention_mask` asks for, or None when every token runs."""
        if padding_free is None:
            padding_free = self.config.trained_padding != "max_length"
        if attention_mask is None:
            return None
        frame_level = attention_mask.dim() == 2 and tuple(attention_mask.shape) == tuple(input_values.shape[:2])
        if frame_level and not padding_free:  # served as trained, padding and all
            return None
        return patch_attention_mask(attention_mask, self.config, input_values.shape[1], input_values.shape[2])

    def _patchout_active(self) -> bool:
        config = self.config
        return self.training and bool(config.patchout_time or config.patchout_freq or config.patchout_random)


class HfAstMLPHead(nn.Module):
    def __init__(self, config: HfAstConfig):
        super().__init__()
        eps = getattr(config, "classifier_layer_norm_eps", None) or config.layer_norm_eps
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.dense = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()

    def forward(self, pooled_output: torch.Tensor) -> torch.Tensor:
        return self.dense(self.layernorm(pooled_output))


def _check_soft_targets(targets: torch.Tensor) -> None:
    """Soft single-label targets are distributions: rows in [0, 1] summing to 1, or all zero (placeholders)."""
    in_range = ((targets >= 0) & (targets <= 1)).all(dim=-1)  # (B,); NaN is out of range
    sums = targets.float().sum(dim=-1)
    # A row rounded to `dtype` keeps its sum to within one ulp of 1 (bf16: 2**-7).
    tolerance = max(1e-3, torch.finfo(targets.dtype).eps)
    valid = in_range & (((sums - 1).abs() <= tolerance) | (sums == 0))
    if bool(valid.all()):
        return
    row = int((~valid).nonzero()[0, 0])
    if not bool(in_range[row]):
        problem = f"row {row} holds {targets[row].tolist()}, outside [0, 1]"
    else:
        problem = f"row {row} sums to {sums[row].item():g}"
    raise ValueError(
        f"soft single_label_classification targets are class probabilities in [0, 1] that sum to 1 per row (an "
        f"all-zero row is a placeholder that adds 0 to the loss), but {problem}. Normalise the rows "
        "(labels / labels.sum(-1, keepdim=True)), or use multi_label_classification for independent per-class targets."
    )


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: HfAstConfig) -> torch.Tensor:
    """Loss chosen by `config.problem_type`; inferred like transformers when unset, without rewriting the config.

    Labels are checked, never reinterpreted: class ids may have any integer dtype but bool;
    multi-label targets must lie in [0, 1]; soft single-label targets must be distributions (an
    all-zero row is a placeholder, e.g. the training collator's undecodable clip, adding 0 to the
    sum while still counting in the batch mean).
    """
    if not isinstance(labels, torch.Tensor):
        raise ValueError(
            f"labels is a {type(labels).__module__}.{type(labels).__name__}; pass a torch tensor, e.g. "
            "torch.as_tensor(labels)."
        )
    class_ids = not labels.is_floating_point() and not labels.is_complex() and labels.dtype != torch.bool
    problem_type = config.problem_type
    if problem_type is None:
        if config.num_labels == 1:
            problem_type = "regression"
        elif class_ids and labels.dim() == 1:
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.squeeze(-1).float())
    if labels.dtype == torch.bool and labels.dim() == 1:
        raise ValueError(
            f"bool labels of shape {tuple(labels.shape)} are not class ids; pass int64 class ids of shape (batch,), "
            f"or (batch, {logits.shape[-1]}) multi-hot targets (bool or float) for multi-label classification."
        )
    if problem_type == "single_label_classification":
        if labels.is_floating_point() and labels.shape == logits.shape:
            # Class probabilities (one-hot, or mixed by mixup): cross-entropy against soft targets.
            _check_soft_targets(labels)
            return nn.functional.cross_entropy(logits.float(), labels.float())
        if labels.dim() != 1 or not class_ids:
            raise ValueError(
                f"single_label_classification needs class ids of shape (batch,) or class probabilities of shape "
                f"(batch, {logits.shape[-1]}), got {labels.dtype} labels of shape {tuple(labels.shape)}."
            )
        return nn.functional.cross_entropy(logits.float(), labels.long())  # int32/int16/uint8 ids too
    if problem_type == "multi_label_classification":
        if labels.shape != logits.shape:
            raise ValueError(
                f"multi_label_classification needs (batch, num_labels={logits.shape[-1]}) multi-hot targets, "
                f"got shape {tuple(labels.shape)}."
            )
        targets = labels.float()
        outside = ~((targets >= 0) & (targets <= 1))  # NaN included
        if bool(outside.any()):
            raise ValueError(
                f"multi_label_classification targets must lie in [0, 1] (binary cross-entropy takes per-class "
                f"probabilities), got {targets[outside][0].item():g}; pass multi-hot or soft targets in [0, 1], or "
                "class ids with single_label_classification."
            )
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)
    raise ValueError(f"unknown problem_type {problem_type!r}")


class HfAstForAudioClassification(HfAstPreTrainedModel):
    """AST with the paper's head: LayerNorm + Linear on the mean of the cls and distillation outputs."""

    def __init__(self, config: HfAstConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.audio_spectrogram_transformer = HfAstModel(config)
        self.classifier = HfAstMLPHead(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        r"""
        labels (`torch.Tensor`, *optional*):
            Class ids `(batch,)` of any integer dtype but bool, or class probabilities `(batch,
            num_labels)` summing to 1, for `single_label_classification` (cross-entropy); multi-hot
            or soft targets in [0, 1] `(batch, num_labels)` for `multi_label_classification` (BCE
            with logits); values for `regression` (MSE). The loss follows `config.problem_type`
            (see `classification_loss`).
        """
        outputs = self.audio_spectrogram_transformer(
            input_values,
            attention_mask=attention_mask,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(outputs.pooler_output)  # (B, num_labels)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    @classmethod
    def from_deit(
        cls, name_or_path, config: HfAstConfig | None = None, channel_reduction: str = "mean", **config_overrides
    ):
        """Initialise an AST from an ImageNet DeiT/ViT checkpoint (the paper's key trick).

        `name_or_path` is a Hub id or local directory of a transformers DeiT/ViT model, or a timm
        state dict (`.pth`/`.safetensors`). The 3-channel patch projection becomes 1-channel by
        averaging the RGB kernels (`channel_reduction="mean"`, the paper's wording) or summing
        them (`"sum"`, the reference implementation); the image position grid is cut or
        interpolated to the audio patch grid; every encoder tensor is copied. Geometry and labels
        come from `config` or `config_overrides` (`max_length=`, `time_stride=`, `id2label=`, ...).
        Needs the `hf_ast` package (not part of the remote code).
        """
        try:
            from hf_ast.conversion.deit import ast_from_deit
        except ModuleNotFoundError as error:
            if error.name not in ("hf_ast", "hf_ast.conversion", "hf_ast.conversion.deit"):
                raise
            raise ImportError(
                "from_deit needs the hf_ast package (pip install hf-ast); remote code alone lacks it"
            ) from error
        return ast_from_deit(cls, name_or_path, config=config, channel_reduction=channel_reduction, **config_overrides)


# ---------------------------------------------------------------------------------------------
# Linear layers at CPU inference
# ---------------------------------------------------------------------------------------------

# `F.linear` on fp32 CPU tensors runs MKL's sgemm; oneDNN's matmul (what torch uses for bf16, and
# what Inductor's CPU freezing path calls) can fuse the MLP's exact GELU and the residual add into
# the matmul (worth ~5% in bf16, where `F.linear` is oneDNN already). Used only where nothing can
# differ but rounding: no autograd, autocast, tracing or compiling, plain fp32/bf16 tensors and
# hook-free `nn.Linear`s.
#
# Which kernels oneDNN has depends on the CPU, and on `ONEDNN_MAX_CPU_ISA`, which caps it like an
# older CPU: so each (dtype, fused form) is probed once before it is used. On an AVX2-only CPU
# oneDNN has no bf16 matmul at all (it cannot create the primitive), and torch's fallback bf16
# gemm is 6x slower there than MKL's fp32 sgemm (AST's MLP shape, one thread, under
# ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2), so bf16 Linear layers (and the patch
# convolution, whose bf16 fallback is 14x slower than fp32) compute in fp32 and round the result to
# bf16 (the fp32 accumulation a bf16 kernel does too).
#
# fp32 takes oneDNN only where it is clearly the faster kernel: where oneDNN runs AVX-512 and MKL
# does not. MKL runs its AVX-512 code on Intel CPUs only (AVX2 code on AMD ones), unless
# MKL_ENABLE_INSTRUCTIONS caps it lower. A batch-1 base forward against transformers' (one thread,
# CPU time, an Intel AVX-512 host): with only MKL capped at AVX2, as on an AMD AVX-512 CPU, oneDNN
# 1.33-1.38x (1.25x on a 2-core AMD EPYC, 2 threads); with both at AVX-512 oneDNN 0.93-1.02x
# between runs, F.linear 1.0x; with both at AVX2 0.97-0.98x. So Intel keeps F.linear, transformers'
# own kernel: parity by construction, at most a few percent forgone. The gate reads the CPU vendor
# instead of timing both kernels at first use: that margin is within the noise of a shared host,
# and timing would delay the first call.
# HF_AST_ONEDNN_LINEAR: unset or "auto" decides as above; "1" takes oneDNN's linear wherever its
# probe passes, faster or not; "0" never, and leaves bf16 to torch's own kernels even where they are slow.


def _onednn_linear_setting(value: str | None) -> tuple[bool, bool]:
    """HF_AST_ONEDNN_LINEAR's value -> (ONEDNN_LINEAR, ONEDNN_LINEAR_FORCED)."""
    value = (value or "auto").strip().lower()
    if value not in ("0", "1", "auto"):
        logger.warning(f"HF_AST_ONEDNN_LINEAR={value!r} is not 0, 1 or auto; using auto")
    return value != "0", value == "1"


# ONEDNN_LINEAR False: torch's own kernels everywhere; ONEDNN_LINEAR_FORCED: oneDNN wherever it runs correctly.
ONEDNN_LINEAR, ONEDNN_LINEAR_FORCED = _onednn_linear_setting(os.environ.get("HF_AST_ONEDNN_LINEAR"))


@functools.cache
def _onednn_linear_op():
    """oneDNN's fused linear op on x86 builds with mkldnn, else None; `_onednn_runs` checks each use of it."""
    # The speed-up comes from MKL sgemm's weakness on x86 hosts; ARM builds route F.linear well already.
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def _onednn_linear(form: str, hidden_states, weight, bias, residual=None) -> torch.Tensor:
    op = _onednn_linear_op()
    if form == "add":
        return op.binary(hidden_states, residual, weight, bias, "add")
    if form == "gelu":
        return op(hidden_states, weight, bias, "gelu", [], "none")  # "none": erf, not tanh
    return op(hidden_states, weight, bias, "none", [], "")


def _reference_linear(form: str, hidden_states, weight, bias, residual=None) -> torch.Tensor:
    output = nn.functional.linear(hidden_states, weight, bias)
    if form == "gelu":
        return nn.functional.gelu(output)
    return output + residual if form == "add" else output


@functools.cache
def _onednn_runs(dtype: torch.dtype, form: str) -> bool:
    """Whether oneDNN's linear in `dtype` runs here and computes F.linear's values, probed once per pair.

    `form` is what the matmul fuses: "none", "gelu" (exact GELU, a unary post-op) or "add" (`+ residual`,
    a binary post-op); each is its own oneDNN primitive.
    """
    if _onednn_linear_op() is None:
        return False
    generator = torch.Generator().manual_seed(0)
    # (3, 16) @ (16, 8): outputs of std ~2 reach the range where tanh-GELU differs from erf-GELU by ~4e-4.
    x, weight, bias, residual = (
        (torch.randn(*shape, generator=generator, device="cpu") * std).to(dtype)
        for shape, std in (((3, 16), 1.0), ((8, 16), 0.5), ((8,), 1.0), ((3, 8), 1.0))
    )
    expected = _reference_linear(form, x.float(), weight.float(), bias.float(), residual.float())
    try:  # a private op whose kernels depend on the CPU and ONEDNN_MAX_CPU_ISA
        with torch.no_grad():
            output = _onednn_linear(form, x, weight, bias, residual)
    except (RuntimeError, TypeError, AttributeError, NotImplementedError) as error:
        logger.info(f"oneDNN's {dtype} linear with {form!r} fused does not run here ({error}); using F.linear")
        return False
    tolerance = 1e-5 if dtype == torch.float32 else 2**-7 * expected.abs().max().item()  # bf16 keeps 8 bits
    if output.dtype != dtype or output.shape != expected.shape or not torch.allclose(
        output.float(), expected, rtol=0, atol=tolerance
    ):
        logger.info(f"oneDNN's {dtype} linear with {form!r} fused computes wrong values here; using F.linear")
        return False
    return True


@functools.cache
def _onednn_has_avx512() -> bool:
    """Whether oneDNN runs AVX-512 kernels in this process: the CPU has them and ONEDNN_MAX_CPU_ISA allows them."""
    # torch exposes no query of oneDNN's ISA, and ATen's get_cpu_capability() sees the CPU but not
    # oneDNN's cap. oneDNN builds a bf16 matmul only from AVX-512 (avx512_core) up, or on AVX2-VNNI-2
    # CPUs, which have no AVX-512 and which ATen's "AVX512" rules out: so that probe is oneDNN's own
    # answer, its cap included. Timing a matmul instead would read the noise of a shared host.
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and _onednn_runs(torch.bfloat16, "none")


@functools.cache
def _cpu_vendor() -> str:
    """The CPU's vendor ("GenuineIntel", "AuthenticAMD", ...), or "" where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    processor = platform.processor()  # on Windows e.g. "Intel64 Family 6 Model 85 Stepping 7, GenuineIntel"
    return next((vendor for vendor in ("GenuineIntel", "AuthenticAMD") if vendor in processor), "")


def _mkl_has_avx512() -> bool:
    """Whether MKL's sgemm (fp32 `F.linear`) may run AVX-512 code here; an unknown vendor counts as yes."""
    cap = os.environ.get("MKL_ENABLE_INSTRUCTIONS", "").strip().upper()
    if cap and not cap.startswith(("AVX512", "AVX10")):
        return False  # capped at AVX2 or below
    return _cpu_vendor() in ("GenuineIntel", "")


@functools.cache
def _onednn_fp32_faster() -> bool:
    """Whether oneDNN's fp32 linear beats `F.linear` here: oneDNN runs AVX-512 and MKL's sgemm does not."""
    faster = torch.backends.mkl.is_available() and _onednn_has_avx512() and not _mkl_has_avx512()
    logger.info(
        f"fp32 Linear layers use {'oneDNN' if faster else 'F.linear'} (CPU vendor {_cpu_vendor() or 'unknown'}, "
        f"oneDNN AVX-512 {_onednn_has_avx512()}, MKL AVX-512 {_mkl_has_avx512()}); HF_AST_ONEDNN_LINEAR=1/0 overrides"
    )
    return faster


def _onednn_fast(dtype: torch.dtype, form: str) -> bool:
    """Whether to take oneDNN's fused linear for `dtype`: it runs correctly here, and is faster (or forced)."""
    if dtype == torch.float32 and not ONEDNN_LINEAR_FORCED and not _onednn_fp32_faster():
        return False
    return _onednn_runs(dtype, form)


def _bf16_computes_in_fp32(module: nn.Module, hidden_states: torch.Tensor) -> bool:
    """Whether a bf16 `module`'s CPU call computes in fp32, oneDNN having no bf16 kernels here (AVX2-only CPUs)."""
    return (
        ONEDNN_LINEAR
        and hidden_states.dtype == module.weight.dtype == torch.bfloat16
        and hidden_states.device.type == "cpu"
        and type(hidden_states) is torch.Tensor
        and not torch.is_autocast_enabled("cpu")
        and not (module._forward_hooks or module._forward_pre_hooks)
        and not (torch.compiler.is_compiling() or _is_exporting() or torch.jit.is_tracing())
        and not _onednn_runs(torch.bfloat16, "none")
    )


def _is_exporting() -> bool:
    # Absent from older torch; export's tensors fail the type checks anyway.
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting and is_exporting())


def _inference_linear(module: nn.Linear, hidden_states: torch.Tensor) -> bool:
    """Whether `linear` may pick its kernel for this call: CPU inference on a plain fp32/bf16 `nn.Linear`."""
    weight = module.weight
    return (
        ONEDNN_LINEAR
        and type(module) is nn.Linear
        and type(hidden_states) is torch.Tensor  # not a FakeTensor/FunctionalTensor of export tracing
        and type(weight) is nn.Parameter  # not a quantized tensor subclass (torchao int8)
        and hidden_states.device.type == "cpu"
        and hidden_states.dtype == weight.dtype
        and weight.dtype in (torch.float32, torch.bfloat16)
        and not (torch.is_grad_enabled() and (hidden_states.requires_grad or weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
        and not (module._forward_hooks or module._forward_pre_hooks)
        and not (torch.compiler.is_compiling() or _is_exporting() or torch.jit.is_tracing())
    )


def linear(
    module: nn.Linear, hidden_states: torch.Tensor, activation: str | None = None, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """`module(hidden_states)`, then exact GELU (`activation="gelu"`) or `+ residual`: one oneDNN call if eligible."""
    if activation not in (None, "gelu"):
        raise ValueError(f"linear() fuses only activation='gelu', got {activation!r}")
    form = "add" if residual is not None else activation or "none"
    same_rows = residual is None or residual.shape[:-1] == hidden_states.shape[:-1]
    if _inference_linear(module, hidden_states) and same_rows:
        dtype = hidden_states.dtype
        if _onednn_fast(dtype, form):
            residual = None if residual is None else residual.contiguous()
            return _onednn_linear(form, hidden_states, module.weight, module.bias, residual)
        if dtype == torch.bfloat16 and not _onednn_runs(dtype, "none"):  # no bf16 matmul here: compute in fp32
            bias = None if module.bias is None else module.bias.float()
            residual = None if residual is None else residual.float()
            return _reference_linear(form, hidden_states.float(), module.weight.float(), bias, residual).to(dtype)
    output = module(hidden_states)
    if activation == "gelu":
        output = nn.functional.gelu(output)
    return output if residual is None else output + residual


__all__ = [
    "HfAstForAudioClassification",
    "HfAstModel",
    "HfAstPreTrainedModel",
    "patchout_keep_mask",
    "regrid_position_embeddings",
    "resize_position_grid",
]
