"""HfAstModel / HfAstForAudioClassification against transformers' AST and independent computations."""

import copy
import json
import tempfile

import pytest
import torch
from conftest import TINY, randomize_, tiny_config, tiny_model
from safetensors.torch import load_file
from transformers import ASTConfig, ASTForAudioClassification, AutoModel, AutoModelForAudioClassification

import hf_ast
from hf_ast import HfAstConfig, HfAstFeatureExtractor, HfAstForAudioClassification, HfAstModel


def transformers_twin(seed=0, **overrides):
    """transformers' own AST with every tensor random."""
    config = ASTConfig(**{**TINY, "num_labels": 5, **overrides})
    return randomize_(ASTForAudioClassification(config), seed=seed)


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("time_stride", 0),
        ("frequency_stride", -1),
        ("max_length", 8),
        ("num_mel_bins", 10),
        ("num_attention_heads", 5),
    ],
)
def test_config_rejects_broken_geometry(field, value):
    with pytest.raises(ValueError, match=field):
        HfAstConfig(**{**TINY, field: value})


def test_config_round_trip_keeps_declared_fields(tmp_path):
    config = tiny_config(max_length=512, time_stride=12, problem_type="multi_label_classification")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "hf_ast" and saved["max_length"] == 512
    loaded = HfAstConfig.from_pretrained(tmp_path)
    assert (loaded.max_length, loaded.time_stride, loaded.problem_type) == (512, 12, "multi_label_classification")
    # 128 bins, 512 frames, stride (10, 12): f = (128-16)//10+1, t = (512-16)//12+1
    assert loaded.patch_grid == (12, 42)


def test_paper_geometry_is_12_by_101():
    assert HfAstConfig().patch_grid == (12, 101)
    assert HfAstConfig(frequency_stride=16, time_stride=16).patch_grid == (8, 64)


# -- parity with transformers ---------------------------------------------------------------


def test_transformers_checkpoint_loads_with_released_names_and_same_logits(tmp_path):
    reference = transformers_twin()
    reference.save_pretrained(tmp_path)
    on_disk = set(load_file(tmp_path / "model.safetensors"))
    assert "audio_spectrogram_transformer.encoder.layer.0.attention.attention.query.weight" in on_disk

    model, info = HfAstForAudioClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert set(model.state_dict()) == on_disk  # released names in memory too
    assert model.config.model_type == "hf_ast"

    x = torch.randn(3, TINY["max_length"], 128)
    with torch.no_grad():
        expected = reference(x, output_hidden_states=True)
        got = model.eval()(x, output_hidden_states=True)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=0)
    assert len(got.hidden_states) == len(expected.hidden_states) == TINY["num_hidden_layers"] + 1

    model.save_pretrained(tmp_path / "ours")
    assert set(load_file(tmp_path / "ours" / "model.safetensors")) == on_disk


def test_parity_with_transformers_on_the_paper_geometry():
    """Base size and 12x101 patches (1214 tokens), the MIT/ast-finetuned-audioset-10-10 shape."""
    torch.manual_seed(0)
    reference = ASTForAudioClassification(ASTConfig(num_labels=527)).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(0, 0.02)
    model = HfAstForAudioClassification(HfAstConfig(num_labels=527)).eval()
    # transformers 5.23 renames tensors in memory; its saved (released) names are ours.
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        model.load_state_dict(load_file(f"{directory}/model.safetensors"), strict=True)
    x = torch.randn(1, 1024, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reference(x).logits, atol=1e-4, rtol=0)
    assert model.audio_spectrogram_transformer.embeddings.position_embeddings.shape == (1, 1214, 768)


def test_eager_and_sdpa_agree_and_attentions_need_eager():
    model = tiny_model()
    eager = tiny_model()
    eager.set_attn_implementation("eager")
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, eager(x).logits, atol=1e-5, rtol=0)
        attentions = eager(x, output_attentions=True).attentions
    tokens = 2 + 12 * 12
    assert len(attentions) == 2 and attentions[0].shape == (2, 4, tokens, tokens)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(2, 4, tokens))
    with pytest.raises(ValueError, match="eager"):
        model(x, output_attentions=True)


# -- variable length and masks --------------------------------------------------------------


def test_padding_free_input_uses_the_leading_position_columns():
    model = tiny_model()  # trained grid 12 x 12 (128 frames)
    frames = 64  # t = (64 - 16) // 10 + 1 = 5 columns
    x = torch.randn(2, frames, 128)
    # Independent expectation: a model built for 64 frames whose position grid is the first 5 columns.
    short = HfAstForAudioClassification(tiny_config(max_length=frames)).eval()
    state = model.state_dict()
    key = "audio_spectrogram_transformer.embeddings.position_embeddings"
    grid = state[key][0, 2:].reshape(12, 12, -1)
    state[key] = torch.cat([state[key][:, :2], grid[:, :5].reshape(1, 60, -1)], dim=1)
    short.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, short(x).logits, atol=1e-5, rtol=0)


def test_longer_input_needs_opt_in_and_interpolates_time_positions():
    model = tiny_model()
    frames = 256  # t = 25 > 12
    x = torch.randn(1, frames, 128)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(x)
    long = HfAstForAudioClassification(tiny_config(max_length=frames)).eval()
    state = model.state_dict()
    key = "audio_spectrogram_transformer.embeddings.position_embeddings"
    grid = state[key][0, 2:].reshape(12, 12, -1).permute(2, 0, 1)[None]  # (1, C, 12, 12)
    grid = torch.nn.functional.interpolate(grid, size=(12, 25), mode="bilinear", align_corners=False)
    state[key] = torch.cat([state[key][:, :2], grid[0].permute(1, 2, 0).reshape(1, 300, -1)], dim=1)
    long.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, interpolate_pos_encoding=True).logits, long(x).logits, atol=1e-5, rtol=0
        )


def test_padded_batch_gives_each_clip_its_logits_alone():
    model = tiny_model()
    extractor = HfAstFeatureExtractor(max_length=128)
    generator = torch.Generator().manual_seed(1)
    # 0.3 s, 0.75 s, 1.2 s (-> 28, 73, 118 frames) and one shorter than a patch (0.1 s -> 8 frames).
    clips = [torch.randn(n, generator=generator) * 0.1 for n in (4800, 12000, 19200, 1600)]
    batch = extractor(clips, sampling_rate=16000, padding="longest", return_attention_mask=True, return_tensors="pt")
    assert batch["attention_mask"].sum(-1).tolist() == [28, 73, 118, 8]
    with torch.no_grad():
        batched = model(**batch).logits
        for index, clip in enumerate(clips):
            alone = extractor(clip, sampling_rate=16000, padding="longest", return_tensors="pt")
            torch.testing.assert_close(batched[index], model(**alone).logits[0], atol=1e-4, rtol=0)
        # Without the mask, padding leaks into the clips (the reference behaviour): results differ.
        assert (model(batch["input_values"]).logits - batched).abs().max() > 1e-3


def test_attention_mask_must_be_a_prefix_mask():
    model = tiny_model()
    x = torch.randn(1, 128, 128)
    mask = torch.ones(1, 128, dtype=torch.long)
    mask[0, 10] = 0
    with pytest.raises(ValueError, match="holes"):
        model(x, attention_mask=mask)
    with pytest.raises(ValueError, match="frame-level"):
        model(x, attention_mask=torch.ones(1, 64, dtype=torch.long))


def test_bad_input_shapes_name_the_fix():
    model = tiny_model()
    with pytest.raises(ValueError, match="num_mel_bins|128"):
        model(torch.randn(1, 128, 64))
    with pytest.raises(ValueError, match="fewer than one patch"):
        model(torch.randn(1, 8, 128))


# -- geometry change ------------------------------------------------------------------------


def test_geometry_change_cuts_the_centre_and_keeps_the_head(tmp_path):
    source = tiny_model(max_length=256)  # grid 12 x 25
    source.save_pretrained(tmp_path)
    target = HfAstForAudioClassification.from_pretrained_with_geometry(tmp_path, max_length=128)  # 12 x 12
    key = "audio_spectrogram_transformer.embeddings.position_embeddings"
    grid = source.state_dict()[key][0, 2:].reshape(12, 25, -1)
    start = 25 // 2 - 12 // 2  # reference: W//2 - t//2
    expected = torch.cat([source.state_dict()[key][:, :2], grid[:, start : start + 12].reshape(1, 144, -1)], dim=1)
    torch.testing.assert_close(target.state_dict()[key], expected)
    for name, tensor in source.state_dict().items():
        if name != key:
            torch.testing.assert_close(target.state_dict()[name], tensor, msg=name)
    assert target.config.max_length == 128


def test_geometry_change_interpolates_for_a_finer_stride_and_renews_the_head(tmp_path):
    source = tiny_model()  # 12 x 12
    source.save_pretrained(tmp_path)
    labels = {0: "dog", 1: "cat", 2: "rain"}
    target = HfAstForAudioClassification.from_pretrained_with_geometry(
        tmp_path, time_stride=6, frequency_stride=6, id2label=labels, problem_type="single_label_classification"
    )
    f, t = (128 - 16) // 6 + 1, (128 - 16) // 6 + 1  # 19 x 19: larger -> bilinear on both axes
    key = "audio_spectrogram_transformer.embeddings.position_embeddings"
    grid = source.state_dict()[key][0, 2:].reshape(12, 12, -1).permute(2, 0, 1)[None]
    grid = torch.nn.functional.interpolate(grid, size=(12, t), mode="bilinear", align_corners=False)
    grid = torch.nn.functional.interpolate(grid, size=(f, t), mode="bilinear", align_corners=False)
    expected = torch.cat([source.state_dict()[key][:, :2], grid[0].permute(1, 2, 0).reshape(1, f * t, -1)], dim=1)
    torch.testing.assert_close(target.state_dict()[key], expected)
    assert target.classifier.dense.weight.shape == (3, TINY["hidden_size"])
    assert target.config.id2label == labels and target.config.problem_type == "single_label_classification"
    with torch.no_grad():
        assert target(torch.randn(1, 128, 128)).logits.shape == (1, 3)


# -- losses, checkpointing, Auto classes ----------------------------------------------------


def test_losses_follow_problem_type():
    x = torch.randn(4, 128, 128)
    model = tiny_model(problem_type="single_label_classification")
    labels = torch.tensor([0, 4, 2, 1])
    out = model(x, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))

    model = tiny_model(problem_type="multi_label_classification")
    soft = torch.rand(4, 5)  # mixup gives soft targets
    out = model(x, labels=soft)
    expected = -(soft * torch.log(torch.sigmoid(out.logits)) + (1 - soft) * torch.log(1 - torch.sigmoid(out.logits)))
    torch.testing.assert_close(out.loss, expected.mean(), atol=1e-5, rtol=1e-5)
    assert model.config.problem_type == "multi_label_classification"

    model = tiny_model(num_labels=1, problem_type="regression")
    target = torch.randn(4)
    out = model(x, labels=target)
    torch.testing.assert_close(out.loss, ((out.logits.squeeze(-1) - target) ** 2).mean())

    model = tiny_model(problem_type="single_label_classification")
    mixed = torch.softmax(torch.randn(4, 5), -1)  # mixup of one-hot targets
    out = model(x, labels=mixed)
    torch.testing.assert_close(out.loss, -(mixed * out.logits.log_softmax(-1)).sum(-1).mean())
    with pytest.raises(ValueError, match="class probabilities"):
        model(x, labels=torch.rand(4, 3))


def test_unset_problem_type_is_not_rewritten():
    model = tiny_model()
    model(torch.randn(2, 128, 128), labels=torch.tensor([1, 2]))
    assert model.config.problem_type is None


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    x, labels = torch.randn(2, 128, 128), torch.tensor([1, 3])
    plain, checkpointed = tiny_model().train(), tiny_model().train()
    # transformers 5.23 renamed it; older 5.x releases only have the first name.
    enable = (
        getattr(checkpointed, "activation_checkpointing_enable", None) or checkpointed.gradient_checkpointing_enable
    )
    enable()
    plain(x, labels=labels).loss.backward()
    checkpointed(x, labels=labels).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_auto_classes_and_clip_embedding(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_hf_ast.HfAstModel"
    assert config["auto_map"]["AutoModelForAudioClassification"] == "modeling_hf_ast.HfAstForAudioClassification"
    assert (tmp_path / "modeling_hf_ast.py").exists() and (tmp_path / "configuration_hf_ast.py").exists()

    classifier = AutoModelForAudioClassification.from_pretrained(tmp_path)
    encoder = AutoModel.from_pretrained(tmp_path)
    assert type(classifier) is HfAstForAudioClassification and type(encoder) is HfAstModel
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        out = encoder.eval()(x)
        torch.testing.assert_close(out.pooler_output, (out.last_hidden_state[:, 0] + out.last_hidden_state[:, 1]) / 2)
        torch.testing.assert_close(classifier.eval()(x).logits, model(x).logits)
        torch.testing.assert_close(classifier.classifier(out.pooler_output), model(x).logits)


def test_return_dict_false_gives_tuples():
    model = tiny_model()
    x = torch.randn(1, 128, 128)
    with torch.no_grad():
        logits = model(x, return_dict=False)[0]
        torch.testing.assert_close(logits, model(x).logits)
        loss, logits = model(x, labels=torch.tensor([1]), return_dict=False)[:2]
    assert loss.ndim == 0


def test_public_api_names():
    for name in ("HfAstConfig", "HfAstFeatureExtractor", "HfAstModel", "HfAstForAudioClassification"):
        assert name in hf_ast.__all__ and hasattr(hf_ast, name)
    assert callable(HfAstForAudioClassification.from_deit)


# -- fp32 CPU inference through oneDNN ------------------------------------------------------


def onednn_calls(fn) -> int:
    """How many oneDNN linear kernels `fn()` runs, counted by torch's profiler (not by our code)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        fn()
    return sum(event.count for event in profiler.key_averages() if event.key == "mkldnn::_linear_pointwise")


@pytest.fixture
def onednn_available(monkeypatch):
    """The fused oneDNN path, forced on (as HF_AST_ONEDNN_LINEAR=1) where its fp32 kernels run correctly.

    By default fp32 takes it only where it is the faster kernel (AMD AVX-512); these tests check the
    path itself on any CPU that can run it.
    """
    from hf_ast import modeling_hf_ast

    if not modeling_hf_ast._onednn_runs(torch.float32, "none"):
        pytest.skip("oneDNN's fp32 linear does not run correctly here (no kernel, or a non-x86 build); "
                    "tests/test_cpu_isa.py covers the fallback")
    monkeypatch.setattr(modeling_hf_ast, "ONEDNN_LINEAR_FORCED", True)
    return modeling_hf_ast


def test_onednn_inference_path_equals_transformers_and_the_aten_path(onednn_available, monkeypatch, tmp_path):
    reference = transformers_twin(seed=3)
    reference.save_pretrained(tmp_path)
    model = HfAstForAudioClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(3, 128, 128)
    with torch.no_grad():
        fused = model(x).logits
        assert onednn_calls(lambda: model(x)) == 6 * TINY["num_hidden_layers"]  # q, k, v, out, fc1+gelu, fc2+res
        torch.testing.assert_close(fused, reference(x).logits, atol=1e-5, rtol=0)
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        fused_bf16 = bf16(x).logits.float()  # the first bf16 call also probes oneDNN's bf16 kernels, once
        if onednn_available._onednn_runs(torch.bfloat16, "none"):  # no bf16 kernels on AVX2-only CPUs
            assert onednn_calls(lambda: bf16(x)) == 6 * TINY["num_hidden_layers"]
        monkeypatch.setattr(onednn_available, "ONEDNN_LINEAR", False)
        assert onednn_calls(lambda: model(x)) == 0
        torch.testing.assert_close(fused, model(x).logits, atol=1e-5, rtol=0)
        # bf16 rounds where the kernels differ (GELU before or after the bf16 store): close, not equal.
        scale = fused.abs().max()
        assert (fused_bf16 - bf16(x).logits.float()).abs().max() < 0.02 * scale
        assert (fused_bf16 - fused).abs().max() < 0.02 * scale


def test_onednn_path_steps_aside_for_autograd_autocast_hooks_and_dropout(onednn_available):
    model = tiny_model(seed=4)
    x = torch.randn(2, 128, 128)
    with torch.no_grad():
        expected = model(x).logits

    # Training forward: F.linear, so gradients reach every weight.
    assert onednn_calls(lambda: model(x).logits.sum().backward()) == 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    # Autocast asks for bf16 matmuls: the fp32 kernel must not take them over.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn_calls(lambda: model(x)) == 0
        assert model(x).logits.dtype == torch.bfloat16

    # A hook on one Linear sees its call; the other five per layer stay fused.
    seen = []
    query = model.audio_spectrogram_transformer.encoder.layer[0].attention.attention.query
    handle = query.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    with torch.no_grad():
        assert onednn_calls(lambda: model(x)) == 6 * TINY["num_hidden_layers"] - 1
        torch.testing.assert_close(model(x).logits, expected, atol=1e-5, rtol=0)
    handle.remove()
    assert seen and seen[0] == (2, 2 + 12 * 12, TINY["hidden_size"])

    # Active dropout (train mode without grad, e.g. MC dropout) is applied, not fused away.
    dropout_model = tiny_model(seed=4, hidden_dropout_prob=0.5).train()
    with torch.no_grad():
        torch.manual_seed(0)
        first = dropout_model(x).logits
        torch.manual_seed(1)
        assert (dropout_model(x).logits - first).abs().max() > 1e-3


def test_linear_helper_refuses_unfusable_activations():
    from hf_ast.modeling_hf_ast import linear

    with pytest.raises(ValueError, match="gelu"):
        linear(torch.nn.Linear(4, 4), torch.randn(1, 4), activation="relu")


# -- input validation: every fault names the problem and the fix ----------------------------


def test_attention_mask_batch_size_must_match_the_input():
    model = tiny_model()
    x = torch.randn(2, 128, 128)
    padded = torch.ones(3, 128, dtype=torch.long)
    padded[:, 100:] = 0
    for mask in (torch.ones(3, 128, dtype=torch.long), padded, padded[:1]):  # all ones was silently accepted
        with pytest.raises(ValueError, match=rf"attention_mask has {mask.shape[0]} rows but input_values has 2 clips"):
            model(x, attention_mask=mask)


def test_numpy_inputs_to_the_model_name_the_fix():
    model = tiny_model()
    x = torch.randn(1, 128, 128)
    message = r"input_values is a numpy\.ndarray.*return_tensors=\"pt\".*torch\.from_numpy"
    with pytest.raises(ValueError, match=message):
        model(x.numpy())
    with pytest.raises(ValueError, match=r"attention_mask is a numpy\.ndarray.*torch\.from_numpy"):
        model(x, attention_mask=torch.ones(1, 128).numpy())
    with pytest.raises(ValueError, match=r"labels is a numpy\.ndarray.*torch\.as_tensor"):
        model(x, labels=torch.tensor([1]).numpy())


def test_empty_batch_is_refused_by_the_model():
    model = tiny_model()
    with pytest.raises(ValueError, match="batch of 0 clips"):
        model(torch.randn(0, 128, 128))


@pytest.mark.parametrize("value", [0.5, 2.0, -1.0])
def test_attention_mask_values_other_than_0_and_1_are_refused(value):
    model = tiny_model()
    x = torch.randn(2, 128, 128)
    mask = torch.ones(2, 128)
    mask[1, 64:] = value  # 0.5 used to count as a valid frame
    with pytest.raises(ValueError, match=rf"values other than 0 and 1 \({value:g}\).*\(mask > 0\.5\)"):
        model(x, attention_mask=mask)
    # Float and bool masks of 0 and 1 are the integer mask.
    mask[1, 64:] = 0
    with torch.no_grad():
        expected = model(x, attention_mask=mask.long()).logits
        torch.testing.assert_close(model(x, attention_mask=mask).logits, expected)
        torch.testing.assert_close(model(x, attention_mask=mask.bool()).logits, expected)


def token_mask_from_columns(columns, f=12, t=12):
    """transformers' token-level mask (batch, 2 + f*t) keeping the first `columns[i]` time columns of clip i."""
    rows = [torch.cat([torch.ones(2), (torch.arange(t) < c).float().repeat(f)]) for c in columns]
    return torch.stack(rows).long()


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_token_level_attention_mask_matches_transformers(tmp_path, implementation):
    reference = transformers_twin(seed=5)
    reference.save_pretrained(tmp_path)
    model = HfAstForAudioClassification.from_pretrained(tmp_path).eval()
    for m in (model, reference):
        m.set_attn_implementation(implementation)
    x = torch.randn(4, 128, 128)
    time_padding = token_mask_from_columns([5, 12, 1, 9])
    holes = (torch.rand(4, 146, generator=torch.Generator().manual_seed(0)) > 0.3).long()
    holes[:, :2] = 1
    no_cls = time_padding.clone()
    no_cls[0, 0] = 0  # cls masked as a key: hf-ast must keep transformers' semantics here too
    no_cls[2, 1] = 0
    with torch.no_grad():
        for mask in (time_padding, holes, no_cls):
            expected = reference(x, attention_mask=mask, output_hidden_states=True)
            got = model(x, attention_mask=mask, output_hidden_states=True)
            torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=0)
            kept = mask.bool()  # hf-ast returns zeros at dropped tokens; compare the kept ones
            torch.testing.assert_close(got.hidden_states[-1][kept], expected.hidden_states[-1][kept], atol=1e-4,
                                       rtol=0)
        # A token mask that drops time columns equals the frame mask of those frames.
        frames = torch.stack([torch.arange(128) < 16 + 10 * (c - 1) for c in (5, 12, 1, 9)]).long()
        torch.testing.assert_close(model(x, attention_mask=frames).logits,
                                   model(x, attention_mask=time_padding).logits, atol=1e-5, rtol=0)


def test_patch_mask_without_the_prefix_tokens_names_the_fix():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(1, 128\): the frame-level.*\(1, 146\): a token-level.*ones for them"):
        model(torch.randn(1, 128, 128), attention_mask=torch.ones(1, 144, dtype=torch.long))


def test_frame_and_token_counts_that_coincide():
    # 50 frames make 2 + 12 * 4 = 50 tokens: a frame-level prefix mask is read as frames, as the extractor
    # gives it; any other mask is ambiguous and the error says how to convert.
    model = tiny_model()
    x = torch.randn(2, 50, 128)
    frames = (torch.arange(50)[None, :] < torch.tensor([[30], [50]])).long()
    with torch.no_grad():
        got = model(x, attention_mask=frames).logits
        torch.testing.assert_close(got[0], model(x[:1, :30]).logits[0], atol=1e-4, rtol=0)  # the clip alone
        torch.testing.assert_close(got[1], model(x[1:]).logits[0], atol=1e-4, rtol=0)
    tokens = token_mask_from_columns([2, 4], t=4)
    assert tokens.shape == frames.shape
    with pytest.raises(ValueError, match=r"50 frames make 50 tokens.*frame-level.*token-level.*\[\[26\], \[46\]\]"):
        model(x, attention_mask=tokens)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_integer_class_ids_of_any_width_are_class_ids(dtype):
    model = tiny_model()  # problem_type unset: inferred from the labels, as transformers does
    x = torch.randn(3, 128, 128)
    labels = torch.tensor([4, 0, 2])
    out = model(x, labels=labels.to(dtype))
    expected = -out.logits.log_softmax(-1)[torch.arange(3), labels].mean()
    torch.testing.assert_close(out.loss, expected)
    single = tiny_model(problem_type="single_label_classification")
    torch.testing.assert_close(single(x, labels=labels.to(dtype)).loss, out.loss)


def test_bool_labels_are_multi_hot_not_class_ids():
    model = tiny_model()
    x = torch.randn(2, 128, 128)
    with pytest.raises(ValueError, match=r"bool labels of shape \(2,\).*int64 class ids.*\(batch, 5\) multi-hot"):
        model(x, labels=torch.tensor([True, False]))
    multi_hot = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    out = model(x, labels=multi_hot)
    p, y = torch.sigmoid(out.logits), multi_hot.float()
    torch.testing.assert_close(out.loss, -(y * p.log() + (1 - y) * (1 - p).log()).mean(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [2.0, -0.5, float("nan")])
def test_multi_label_targets_outside_0_1_are_refused(bad):
    model = tiny_model(problem_type="multi_label_classification")
    labels = torch.zeros(2, 5)
    labels[1, 3] = bad
    with pytest.raises(ValueError, match=r"multi_label_classification targets must lie in \[0, 1\]"):
        model(torch.randn(2, 128, 128), labels=labels)


def test_soft_single_label_targets_must_be_distributions():
    model = tiny_model(problem_type="single_label_classification")
    x = torch.randn(3, 128, 128)
    with pytest.raises(ValueError, match=r"sum to 1.*row 1 sums to 2"):
        model(x, labels=torch.tensor([[1.0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 1]]))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        model(x, labels=torch.tensor([[1.5, -0.5, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]))
    # An all-zero row is a placeholder (the training collator's undecodable clips): it adds 0 to the sum.
    labels = torch.tensor([[0.3, 0.7, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]])
    out = model(x, labels=labels)
    log_p = out.logits.log_softmax(-1)
    expected = -(0.3 * log_p[0, 0] + 0.7 * log_p[0, 1] + log_p[2, 4]) / 3
    torch.testing.assert_close(out.loss, expected)


def test_input_that_requires_grad_gets_the_gradient_transformers_gives(tmp_path):
    reference = transformers_twin(seed=6)
    reference.save_pretrained(tmp_path)
    model = HfAstForAudioClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 128, 128)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    model(ours).logits[:, 1].sum().backward()
    reference(theirs).logits[:, 1].sum().backward()
    assert ours.grad is not None and ours.grad.abs().max() > 0
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-4)
