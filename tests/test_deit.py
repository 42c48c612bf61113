"""from_deit and the pure DeiT/ViT/timm -> AST conversions, checked tensor by tensor against the sources.

Expected values are computed here from the source tensors with plain indexing and
`F.interpolate`; the hf_ast helpers under test are never used to build an expectation.
"""

import logging

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
    ViTConfig,
    ViTForImageClassification,
)

import hf_ast
from hf_ast import HfAstForAudioClassification
from hf_ast.conversion import deit_state_dict_to_ast, detect_source_format

HIDDEN, LAYERS, HEADS, MLP = 32, 2, 2, 64
AST = "audio_spectrogram_transformer."


# -- tiny sources -------------------------------------------------------------------------------


@torch.no_grad()
def randomize_(model, seed=0):
    """Every tensor random, including cls/dist tokens and position embeddings (zeros at init)."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model.eval()


def vit_kwargs(image_size, patch_size=16):
    return dict(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=MLP,
        image_size=image_size, patch_size=patch_size, num_labels=3,
    )


def save_deit(directory, image_size=384, patch_size=16, cls=DeiTForImageClassificationWithTeacher, seed=0):
    """A random transformers DeiT saved with save_pretrained; returns its on-disk tensors."""
    model = randomize_(cls(DeiTConfig(**vit_kwargs(image_size, patch_size))), seed)
    model.save_pretrained(directory)
    return load_file(directory / "model.safetensors"), model


def save_vit(directory, seed=1):
    model = randomize_(ViTForImageClassification(ViTConfig(**vit_kwargs(224))), seed)
    model.save_pretrained(directory)
    return load_file(directory / "model.safetensors")


def timm_deit_state_dict(seed=2):
    """timm deit_tiny_distilled at 224 px (14x14 grid) shrunk to the tiny size; every tensor random."""
    model = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, embed_dim=HIDDEN, depth=LAYERS, num_heads=HEADS,
        mlp_ratio=MLP / HIDDEN,
    )
    return {name: tensor.clone() for name, tensor in randomize_(model, seed).state_dict().items()}


# -- independent expectations -------------------------------------------------------------------


def ast_grid(max_length, num_mel_bins=128, patch=16, stride=10):
    # conv output size without padding: (input - kernel) // stride + 1
    return (num_mel_bins - patch) // stride + 1, (max_length - patch) // stride + 1


def expected_position_grid(positions, num_prefix, side, f, t):
    """Image grid (side x side, rows = frequency, columns = time) -> (f*t, C), frequency-major.

    Time first: centre columns [side//2 - t//2, +t) or bilinear to (side, t); then rows likewise.
    """
    channels = positions.shape[-1]
    grid = positions[0, num_prefix:].reshape(side, side, channels)  # (rows, cols, C)
    if t <= side:
        first = side // 2 - t // 2
        grid = grid[:, first : first + t]
    else:
        grid = F.interpolate(grid.permute(2, 0, 1)[None], size=(side, t), mode="bilinear", align_corners=False)
        grid = grid[0].permute(1, 2, 0)
    if f <= side:
        first = side // 2 - f // 2
        grid = grid[first : first + f]
    else:
        grid = F.interpolate(grid.permute(2, 0, 1)[None], size=(f, t), mode="bilinear", align_corners=False)
        grid = grid[0].permute(1, 2, 0)
    return grid.reshape(f * t, channels)


def assert_encoder_copied(state, source, source_prefix):
    """transformers-named source (legacy names on disk) -> same suffix under audio_spectrogram_transformer."""
    for name, tensor in source.items():
        if name.startswith(source_prefix + "encoder.") or name.startswith(source_prefix + "layernorm."):
            target = AST + name[len(source_prefix):]
            assert torch.equal(state[target], tensor), name


# -- transformers DeiT ----------------------------------------------------------------------


def test_deit_cut_case_copies_every_tensor(tmp_path):
    source, _ = save_deit(tmp_path)
    # the 24x24 grid and the tokens really are random, so the checks below can fail
    assert source["deit.embeddings.position_embeddings"].abs().min() > 0
    model = HfAstForAudioClassification.from_deit(tmp_path, max_length=128, num_labels=4)
    state = model.state_dict()

    assert model.config.hidden_size == HIDDEN and model.config.num_attention_heads == HEADS
    assert model.config.layer_norm_eps == 1e-12 and model.config.max_length == 128
    assert_encoder_copied(state, source, "deit.")
    assert torch.equal(state[AST + "embeddings.cls_token"], source["deit.embeddings.cls_token"])
    assert torch.equal(state[AST + "embeddings.distillation_token"], source["deit.embeddings.distillation_token"])
    kernel = source["deit.embeddings.patch_embeddings.projection.weight"]  # (C, 3, 16, 16)
    assert torch.allclose(state[AST + "embeddings.patch_embeddings.projection.weight"], kernel.mean(1, keepdim=True))
    assert torch.equal(
        state[AST + "embeddings.patch_embeddings.projection.bias"],
        source["deit.embeddings.patch_embeddings.projection.bias"],
    )

    # 128 frames, 128 bins, stride 10: f = t = (128-16)//10+1 = 12 <= 24: centre cut, first row/col 24//2 - 12//2 = 6
    f, t = ast_grid(128)
    assert (f, t) == (12, 12)
    positions = source["deit.embeddings.position_embeddings"]  # (1, 2 + 576, C)
    converted = state[AST + "embeddings.position_embeddings"]
    assert converted.shape == (1, 2 + 144, HIDDEN)
    assert torch.equal(converted[0, :2], positions[0, :2])  # cls, dist
    for fi in range(12):
        for ti in range(12):
            # source patch (row 6 + fi, column 6 + ti) of the 24-wide image grid
            assert torch.equal(converted[0, 2 + fi * 12 + ti], positions[0, 2 + (6 + fi) * 24 + (6 + ti)])

    # the head is new: 4 labels, not DeiT's 3 ImageNet classes
    assert state["classifier.dense.weight"].shape == (4, HIDDEN)
    logits = model(torch.randn(2, 128, 128)).logits
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()


def test_deit_interpolation_case_time_axis(tmp_path):
    source, _ = save_deit(tmp_path)
    model = HfAstForAudioClassification.from_deit(tmp_path, max_length=512, channel_reduction="sum")
    state = model.state_dict()
    # 512 frames: t = (512-16)//10+1 = 50 > 24 -> bilinear in time; f = 12 -> rows 6..17
    f, t = ast_grid(512)
    assert (f, t) == (12, 50)
    positions = source["deit.embeddings.position_embeddings"]
    expected = expected_position_grid(positions, 2, 24, f, t)
    converted = state[AST + "embeddings.position_embeddings"]
    assert converted.shape == (1, 2 + 600, HIDDEN)
    assert torch.allclose(converted[0, 2:], expected, atol=1e-6)
    assert torch.equal(converted[0, :2], positions[0, :2])
    kernel = source["deit.embeddings.patch_embeddings.projection.weight"]
    assert torch.allclose(state[AST + "embeddings.patch_embeddings.projection.weight"], kernel.sum(1, keepdim=True))
    logits = model(torch.randn(1, 512, 128)).logits
    assert torch.isfinite(logits).all()


def test_default_geometry_is_the_papers_audioset_grid(tmp_path):
    source, _ = save_deit(tmp_path)
    model = HfAstForAudioClassification.from_deit(tmp_path)
    assert (model.config.max_length, model.config.num_mel_bins, model.config.time_stride) == (1024, 128, 10)
    # t = (1024-16)//10+1 = 101 > 24 (interpolated), f = 12 (cut)
    positions = model.state_dict()[AST + "embeddings.position_embeddings"]
    assert positions.shape == (1, 2 + 12 * 101, HIDDEN)
    expected = expected_position_grid(source["deit.embeddings.position_embeddings"], 2, 24, 12, 101)
    assert torch.allclose(positions[0, 2:], expected, atol=1e-6)


def test_frequency_interpolation_when_more_mel_bins_than_the_image_grid(tmp_path):
    source, _ = save_deit(tmp_path, image_size=224)  # 14x14 grid
    # 160 bins with frequency stride 5: f = (160-16)//5+1 = 29 > 14 -> bilinear in frequency too
    model = HfAstForAudioClassification.from_deit(tmp_path, max_length=128, num_mel_bins=160, frequency_stride=5)
    f, t = ast_grid(128, num_mel_bins=160, stride=5)[0], ast_grid(128)[1]
    assert (f, t) == (29, 12)
    expected = expected_position_grid(source["deit.embeddings.position_embeddings"], 2, 14, f, t)
    converted = model.state_dict()[AST + "embeddings.position_embeddings"]
    assert torch.allclose(converted[0, 2:], expected, atol=1e-6)


def test_sum_reduction_equals_the_spectrogram_on_all_three_channels(tmp_path):
    _, deit = save_deit(tmp_path)
    spectrogram = torch.randn(1, 128, 128)  # (batch, time, freq)
    image = spectrogram.transpose(1, 2)[:, None]  # (1, 1, freq, time): frequency is the image's rows
    conv = deit.deit.embeddings.patch_embeddings.projection
    with torch.no_grad():
        rgb = F.conv2d(image.repeat(1, 3, 1, 1), conv.weight, conv.bias, stride=10)  # (1, C, f, t)
        expected = rgb.flatten(2).transpose(1, 2)  # (1, f*t, C), frequency-major
        for reduction, scale in (("sum", 1.0), ("mean", 1 / 3)):
            model = HfAstForAudioClassification.from_deit(tmp_path, max_length=128, channel_reduction=reduction)
            patches = model.audio_spectrogram_transformer.embeddings.patch_embeddings(spectrogram)
            scaled = F.conv2d(image.repeat(1, 3, 1, 1) * scale, conv.weight, conv.bias, stride=10)
            assert torch.allclose(patches, scaled.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-4), reduction
            if reduction == "sum":
                assert torch.allclose(patches, expected, rtol=1e-5, atol=1e-4)


def test_current_in_memory_names_and_bare_encoder_are_accepted(tmp_path):
    source, deit = save_deit(tmp_path)
    config = hf_ast.HfAstConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                intermediate_size=MLP, max_length=128)
    from_disk = deit_state_dict_to_ast(source, "transformers", config)
    in_memory = deit.state_dict()  # transformers 5 names: deit.layers.N.attention.q_proj, mlp.fc1, ...
    assert any(".q_proj." in name for name in in_memory)
    assert detect_source_format(in_memory) == "transformers"
    from_memory = deit_state_dict_to_ast(in_memory, "transformers", config)
    assert from_disk.keys() == from_memory.keys()
    assert all(torch.equal(from_disk[name], from_memory[name]) for name in from_disk)

    # DeiTModel: no "deit." prefix, and a pooler (dropped, logged)
    base_dir = tmp_path / "base"
    base_source, _ = save_deit(base_dir, cls=DeiTModel)
    assert "pooler.dense.weight" in base_source and "encoder.layer.0.intermediate.dense.weight" in base_source
    model = HfAstForAudioClassification.from_deit(base_dir, max_length=128)
    assert_encoder_copied(model.state_dict(), base_source, "")


def test_dropped_heads_are_logged(tmp_path, caplog):
    save_deit(tmp_path)
    caplog.set_level(logging.INFO, logger="hf_ast")
    HfAstForAudioClassification.from_deit(tmp_path, max_length=128)
    dropped = [record.getMessage() for record in caplog.records if record.getMessage().startswith("dropped")]
    assert len(dropped) == 1
    for name in ("cls_classifier.weight", "cls_classifier.bias", "distillation_classifier.weight",
                 "distillation_classifier.bias"):
        assert name in dropped[0]


def test_patch_size_mismatch_names_both(tmp_path):
    save_deit(tmp_path, image_size=384, patch_size=32)
    with pytest.raises(ValueError, match=r"32x32.*patch_size=16"):
        HfAstForAudioClassification.from_deit(tmp_path, max_length=128)


def test_bad_channel_reduction_raises(tmp_path):
    save_deit(tmp_path)
    with pytest.raises(ValueError, match="channel_reduction='max'"):
        HfAstForAudioClassification.from_deit(tmp_path, channel_reduction="max")


def test_override_contradicting_the_checkpoint_raises(tmp_path):
    save_deit(tmp_path)
    with pytest.raises(ValueError, match="num_attention_heads=4 contradicts"):
        HfAstForAudioClassification.from_deit(tmp_path, max_length=128, num_attention_heads=4)


def test_labels_and_problem_type_overrides(tmp_path):
    save_deit(tmp_path)
    model = HfAstForAudioClassification.from_deit(
        tmp_path, max_length=128, id2label={0: "dog", 1: "rain"}, problem_type="multi_label_classification"
    )
    assert model.config.label2id == {"dog": 0, "rain": 1}
    assert model.config.problem_type == "multi_label_classification"
    assert model.classifier.dense.weight.shape == (2, HIDDEN)


def test_config_gives_geometry_and_labels_the_checkpoint_gives_the_backbone(tmp_path, caplog):
    source, _ = save_deit(tmp_path)
    config = hf_ast.HfAstConfig(max_length=256, time_stride=12, num_labels=7)  # hidden 768: the checkpoint has 32
    caplog.set_level(logging.INFO, logger="hf_ast")
    model = HfAstForAudioClassification.from_deit(tmp_path, config=config)
    assert (model.config.hidden_size, model.config.intermediate_size) == (HIDDEN, MLP)
    assert (model.config.max_length, model.config.time_stride, model.config.num_labels) == (256, 12, 7)
    assert "replace the config's" in caplog.text
    # t = (256-16)//12+1 = 21 <= 24: columns from 24//2 - 21//2 = 2; f = 12: rows from 6
    positions = model.state_dict()[AST + "embeddings.position_embeddings"]
    assert positions.shape == (1, 2 + 12 * 21, HIDDEN)
    image = source["deit.embeddings.position_embeddings"]
    for fi in range(12):
        for ti in range(21):
            assert torch.equal(positions[0, 2 + fi * 21 + ti], image[0, 2 + (6 + fi) * 24 + (2 + ti)])


# -- transformers ViT -----------------------------------------------------------------------


def test_vit_distillation_token_starts_as_cls(tmp_path, caplog):
    source = save_vit(tmp_path)
    caplog.set_level(logging.INFO, logger="hf_ast")
    model = HfAstForAudioClassification.from_deit(tmp_path, max_length=128)
    state = model.state_dict()
    assert "no distillation token" in caplog.text and "classifier.weight" in caplog.text
    assert_encoder_copied(state, source, "vit.")
    cls_token = source["vit.embeddings.cls_token"]
    assert torch.equal(state[AST + "embeddings.cls_token"], cls_token)
    assert torch.equal(state[AST + "embeddings.distillation_token"], cls_token)
    positions = source["vit.embeddings.position_embeddings"]  # (1, 1 + 14*14, C)
    converted = state[AST + "embeddings.position_embeddings"]
    assert torch.equal(converted[0, 0], positions[0, 0]) and torch.equal(converted[0, 1], positions[0, 0])
    # f = t = 12 <= 14: first row/column 14//2 - 12//2 = 1
    for fi in range(12):
        for ti in range(12):
            assert torch.equal(converted[0, 2 + fi * 12 + ti], positions[0, 1 + (1 + fi) * 14 + (1 + ti)])
    assert torch.isfinite(model(torch.randn(1, 128, 128)).logits).all()


# -- timm state dicts -----------------------------------------------------------------------


def assert_timm_copied(state, source, reduction="mean", f=12, t=12):
    c = HIDDEN
    for layer in range(LAYERS):
        block, target = f"blocks.{layer}.", f"{AST}encoder.layer.{layer}."
        qkv_w, qkv_b = source[block + "attn.qkv.weight"], source[block + "attn.qkv.bias"]  # (3C, C), (3C,)
        for i, part in enumerate(("query", "key", "value")):
            assert torch.equal(state[f"{target}attention.attention.{part}.weight"], qkv_w[i * c : (i + 1) * c])
            assert torch.equal(state[f"{target}attention.attention.{part}.bias"], qkv_b[i * c : (i + 1) * c])
        pairs = {"attn.proj": "attention.output.dense", "norm1": "layernorm_before", "norm2": "layernorm_after",
                 "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
        for timm_name, ast_name in pairs.items():
            for kind in ("weight", "bias"):
                assert torch.equal(state[f"{target}{ast_name}.{kind}"], source[f"{block}{timm_name}.{kind}"])
    assert torch.equal(state[AST + "layernorm.weight"], source["norm.weight"])
    assert torch.equal(state[AST + "layernorm.bias"], source["norm.bias"])
    assert torch.equal(state[AST + "embeddings.cls_token"], source["cls_token"])
    assert torch.equal(state[AST + "embeddings.distillation_token"], source["dist_token"])
    kernel = source["patch_embed.proj.weight"]
    reduced = kernel.sum(1, keepdim=True) if reduction == "sum" else kernel.mean(1, keepdim=True)
    assert torch.allclose(state[AST + "embeddings.patch_embeddings.projection.weight"], reduced)
    assert torch.equal(state[AST + "embeddings.patch_embeddings.projection.bias"], source["patch_embed.proj.bias"])
    positions = state[AST + "embeddings.position_embeddings"]
    assert torch.equal(positions[0, :2], source["pos_embed"][0, :2])
    assert torch.allclose(positions[0, 2:], expected_position_grid(source["pos_embed"], 2, 14, f, t), atol=1e-6)


@pytest.mark.parametrize("wrapper", ["model", "state_dict", None])
def test_timm_pth(tmp_path, wrapper):
    source = timm_deit_state_dict()
    path = tmp_path / "deit.pth"
    torch.save({wrapper: source} if wrapper else source, path)
    model = HfAstForAudioClassification.from_deit(path, max_length=128, num_attention_heads=HEADS)
    assert model.config.layer_norm_eps == 1e-6  # timm's eps, not transformers' 1e-12
    assert (model.config.num_hidden_layers, model.config.intermediate_size) == (LAYERS, MLP)
    assert_timm_copied(model.state_dict(), source)
    assert torch.isfinite(model(torch.randn(1, 128, 128)).logits).all()


def test_timm_safetensors_with_interpolated_time_axis(tmp_path):
    source = timm_deit_state_dict()
    path = tmp_path / "deit.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in source.items()}, str(path))
    assert detect_source_format(load_file(path)) == "timm"
    model = HfAstForAudioClassification.from_deit(
        path, max_length=512, num_attention_heads=HEADS, channel_reduction="sum"
    )
    # t = (512-16)//10+1 = 50 > 14: interpolated; f = 12 <= 14: rows 1..12
    assert_timm_copied(model.state_dict(), source, reduction="sum", f=12, t=50)


def test_timm_head_count_defaults_to_64_wide_heads(tmp_path):
    source = timm_deit_state_dict()
    path = tmp_path / "deit.pth"
    torch.save(source, path)
    # hidden 32 is not a multiple of 64: the count cannot be guessed
    with pytest.raises(ValueError, match="num_attention_heads"):
        HfAstForAudioClassification.from_deit(path, max_length=128)


def test_timm_unknown_key_raises(tmp_path):
    source = timm_deit_state_dict()
    source["blocks.0.ls1.gamma"] = torch.ones(HIDDEN)  # a layer scale: dropping it changes the network
    path = tmp_path / "deit.pth"
    torch.save(source, path)
    with pytest.raises(ValueError, match=r"blocks\.0\.ls1\.gamma"):
        HfAstForAudioClassification.from_deit(path, max_length=128, num_attention_heads=HEADS)


def test_timm_missing_key_raises(tmp_path):
    source = timm_deit_state_dict()
    del source["blocks.1.mlp.fc2.bias"]
    path = tmp_path / "deit.pth"
    torch.save(source, path)
    with pytest.raises(ValueError, match=r"missing .*encoder\.layer\.1\.output\.dense\.bias"):
        HfAstForAudioClassification.from_deit(path, max_length=128, num_attention_heads=HEADS)


def test_timm_heads_dropped_and_logged(tmp_path, caplog):
    source = timm_deit_state_dict()
    path = tmp_path / "deit.pth"
    torch.save(source, path)
    caplog.set_level(logging.INFO, logger="hf_ast")
    HfAstForAudioClassification.from_deit(path, max_length=128, num_attention_heads=HEADS)
    dropped = [record.getMessage() for record in caplog.records if record.getMessage().startswith("dropped")]
    assert len(dropped) == 1
    assert all(name in dropped[0] for name in ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias"))


def test_timm_forward_matches_the_reference_surgery(tmp_path):
    """End to end: YuanGongND/ast's own recipe applied to the timm model gives the same clip embedding."""
    model = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, embed_dim=HIDDEN, depth=LAYERS, num_heads=HEADS,
        mlp_ratio=MLP / HIDDEN,
    )
    randomize_(model, seed=7)
    path = tmp_path / "deit.pth"
    torch.save(model.state_dict(), path)
    ast = HfAstForAudioClassification.from_deit(
        path, max_length=512, num_attention_heads=HEADS, channel_reduction="sum"
    )

    # the reference's surgery: summed kernels with stride 10; time positions interpolated 14 -> 50, rows 1..12 kept
    kernel, bias = model.patch_embed.proj.weight.sum(1, keepdim=True), model.patch_embed.proj.bias
    grid = model.pos_embed[:, 2:].detach().reshape(1, 14, 14, HIDDEN).permute(0, 3, 1, 2)  # (1, C, 14, 14)
    grid = F.interpolate(grid, size=(14, 50), mode="bilinear", align_corners=False)[:, :, 1:13]  # (1, C, 12, 50)
    positions = torch.cat([model.pos_embed[:, :2], grid.flatten(2).transpose(1, 2)], dim=1)  # (1, 2 + 600, C)
    input_values = torch.randn(2, 512, 128)
    with torch.no_grad():
        x = F.conv2d(input_values.transpose(1, 2)[:, None], kernel, bias, stride=10).flatten(2).transpose(1, 2)
        x = torch.cat([model.cls_token.expand(2, -1, -1), model.dist_token.expand(2, -1, -1), x], dim=1) + positions
        for block in model.blocks:
            x = block(x)
        x = model.norm(x)
        expected = (x[:, 0] + x[:, 1]) / 2
        pooled = ast.audio_spectrogram_transformer(input_values).pooler_output
    assert torch.allclose(pooled, expected, atol=1e-4)
