"""Patchout (PaSST, Koutini et al. 2021): training-time patch dropping in the model and the training script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, load_script, save_tiny_deit, tiny_config, tiny_model

from hf_ast import HfAstConfig, HfAstForAudioClassification
from hf_ast.training.synthetic import write_sound_events_audiofolder

ROOT = Path(__file__).resolve().parents[1]
F = T = 12  # TINY's patch grid: 128 bins and 128 frames at stride 10, (128 - 16) // 10 + 1
PATCHOUT = dict(patchout_time=5, patchout_freq=4)


def with_patchout(model, **fields):
    """The same weights with patchout configured (a deep copy of model and config)."""
    import copy

    other = copy.deepcopy(model)
    for name, value in fields.items():
        setattr(other.config, name, value)
    return other


def kept_tokens(hidden: torch.Tensor) -> torch.Tensor:
    """`(B, L)` bool: positions whose hidden state is not all zeros (dropped and padded ones are zeros)."""
    return hidden.abs().sum(-1) != 0


def seeded(model, seed=0):
    model.audio_spectrogram_transformer.patchout_generator = torch.Generator().manual_seed(seed)
    return model


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [("patchout_time", T), ("patchout_freq", F), ("patchout_time", -1),
                                          ("patchout_random", 1.0), ("patchout_random", -0.1)])
def test_config_refuses_patchout_that_leaves_no_patches(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_patchout_fields_round_trip(tmp_path):
    tiny_config(patchout_time=3, patchout_random=0.25).save_pretrained(tmp_path)
    loaded = HfAstConfig.from_pretrained(tmp_path)
    assert (loaded.patchout_time, loaded.patchout_freq, loaded.patchout_random) == (3, 0, 0.25)


# -- the model ------------------------------------------------------------------------------


def test_evaluation_sees_every_patch_and_training_without_patchout_is_unchanged():
    model = tiny_model()
    dropping = with_patchout(model, patchout_random=0.3, **PATCHOUT)
    x = torch.randn(3, TINY["max_length"], 128)
    with torch.no_grad():
        expected = model.eval()(x).logits
        assert torch.equal(dropping.eval()(x).logits, expected)
        assert torch.equal(model.train()(x).logits, expected)  # no dropout configured: train == eval
        assert not torch.allclose(dropping.train()(x).logits, expected)


@pytest.mark.parametrize("random_fraction", [0.0, 0.5])
def test_unpadded_batch_keeps_the_grid_left_by_the_dropped_rows_and_columns(random_fraction):
    model = seeded(with_patchout(tiny_model(), patchout_random=random_fraction, **PATCHOUT)).train()
    shapes = []
    hook = model.audio_spectrogram_transformer.encoder.register_forward_pre_hook(
        lambda module, args: shapes.append(tuple(args[0].shape)))
    with torch.no_grad():
        hidden = model.audio_spectrogram_transformer(torch.randn(3, TINY["max_length"], 128)).last_hidden_state
    hook.remove()
    patches = (F - 4) * (T - 5)  # 8 rows x 7 columns
    patches -= int(patches * random_fraction)
    assert shapes == [(3, 2 + patches, TINY["hidden_size"])]  # dense: every clip keeps as many
    kept = kept_tokens(hidden)
    assert kept.sum(1).tolist() == [2 + patches] * 3 and kept[:, :2].all()
    if not random_fraction:  # structured: the same rows and columns in every clip, whole rows and columns
        grid = kept[:, 2:].reshape(3, F, T)
        assert (grid == grid[:1]).all()
        rows, columns = grid[0].any(1), grid[0].any(0)
        assert rows.sum() == F - 4 and columns.sum() == T - 5
        assert torch.equal(grid[0], rows[:, None] & columns[None, :])


def test_padded_batch_never_keeps_padding_and_a_short_clip_keeps_a_patch():
    frames = torch.tensor([128, 60, 16])  # 12, 5 and 1 real columns
    mask = (torch.arange(128) < frames[:, None]).long()
    real_columns = (torch.arange(T) * 10 + 16)[None, :] <= frames[:, None]  # (B, t)
    real_columns[:, 0] = True
    real = real_columns[:, None, :].expand(-1, F, -1).reshape(3, F * T)
    model = with_patchout(tiny_model(), patchout_time=11, patchout_freq=8, patchout_random=0.9).train()
    for seed in range(10):
        with torch.no_grad():
            hidden = seeded(model, seed).audio_spectrogram_transformer(
                torch.randn(3, 128, 128), attention_mask=mask, padding_free=True).last_hidden_state
        kept = kept_tokens(hidden)
        assert kept[:, :2].all()
        assert not (kept[:, 2:] & ~real).any(), "padding was kept"
        assert (kept[:, 2:].sum(1) >= 1).all(), "a clip lost every patch"


def test_kept_patches_carry_their_own_position_embeddings():
    model = seeded(with_patchout(tiny_model(), patchout_random=0.2, **PATCHOUT)).train()
    inputs = []
    hook = model.audio_spectrogram_transformer.encoder.register_forward_pre_hook(
        lambda module, args: inputs.append(args[0]))
    x = torch.randn(2, TINY["max_length"], 128)
    with torch.no_grad():
        hidden = model.audio_spectrogram_transformer(x).last_hidden_state
    hook.remove()
    # Independently: conv patches, frequency-major, then cls, distillation and the positions.
    embeddings = model.audio_spectrogram_transformer.embeddings
    conv = embeddings.patch_embeddings.projection
    patches = torch.nn.functional.conv2d(x.transpose(1, 2).unsqueeze(1), conv.weight, conv.bias, stride=(10, 10))
    tokens = torch.cat([embeddings.cls_token.expand(2, -1, -1), embeddings.distillation_token.expand(2, -1, -1),
                        patches.flatten(2).transpose(1, 2)], dim=1) + embeddings.position_embeddings
    kept = kept_tokens(hidden)
    expected = tokens[kept].view(2, -1, tokens.shape[-1])
    torch.testing.assert_close(inputs[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_and_eager_drop_and_compute_the_same(padded):
    x = torch.randn(3, 128, 128)
    mask = (torch.arange(128) < torch.tensor([[128], [70], [40]])).long() if padded else None
    logits = {}
    for implementation in ("sdpa", "eager"):
        model = with_patchout(tiny_model(), patchout_random=0.3, **PATCHOUT)
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            logits[implementation] = seeded(model, 3).train()(x, attention_mask=mask, padding_free=True).logits
    torch.testing.assert_close(logits["sdpa"], logits["eager"], atol=1e-5, rtol=0)


def test_output_attentions_hides_dropped_patches_as_keys():
    model = seeded(with_patchout(tiny_model(), **PATCHOUT)).train()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(torch.randn(2, 128, 128), output_attentions=True).attentions
    kept_keys = attentions[0][0, 0, 0] > 0  # (L,): what the cls token attends to
    assert int(kept_keys.sum()) == 2 + (F - 4) * (T - 5)


def test_autocast_bf16_trains():
    model = seeded(with_patchout(tiny_model(), patchout_random=0.1, **PATCHOUT)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(2, 128, 128), labels=torch.tensor([1, 3])).loss
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    x, labels = torch.randn(3, 128, 128), torch.tensor([0, 1, 4])
    mask = (torch.arange(128) < torch.tensor([[128], [70], [40]])).long()
    grads = []
    for checkpointing in (False, True):
        model = with_patchout(tiny_model(), patchout_random=0.2, **PATCHOUT)
        if checkpointing:
            model.gradient_checkpointing_enable()
        seeded(model, 5).train()(x, attention_mask=mask, labels=labels, padding_free=True).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=0)


def test_two_ddp_processes_drop_different_columns_and_sync_gradients(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tests" / "patchout_ddp_probe.py"), str(tmp_path)], check=True,
                   timeout=240, cwd=ROOT)
    ranks = [json.loads((tmp_path / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    kept = [torch.tensor(rank["kept"]) for rank in ranks]  # (B, 2 + f*t) each
    for mask in kept:
        assert (mask.sum(1) == 2 + (F - 4) * (T - 6)).all() and (mask == mask[:1]).all()
    assert not torch.equal(kept[0], kept[1]), "both processes dropped the same patches"
    assert ranks[0]["grad_sha256"] == ranks[1]["grad_sha256"]  # DDP averaged the gradients


# -- the training script --------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory):
    data = tmp_path_factory.mktemp("sound_events")
    write_sound_events_audiofolder(data, num_train=48, num_test=24, seed=0, duration_s=1.0)
    return data, save_tiny_deit(tmp_path_factory.mktemp("deit"))


def argv(run_inputs, output, *extra):
    data, deit = run_inputs
    return ["--dataset_name", str(data), "--model_name_or_path", str(deit), "--output_dir", str(output),
            "--max_length", "98", "--per_device_train_batch_size", "8", "--num_train_epochs", "1",
            "--learning_rate", "1e-3", "--warmup_steps", "0", "--seed", "7", *extra]


def test_script_records_patchout_and_saves_the_model_without_it(run_inputs, tmp_path):
    output = tmp_path / "run"
    load_script().main(argv(run_inputs, output, "--patchout_time", "3", "--patchout_freq", "4",
                            "--patchout_random", "0.1"))
    saved = json.loads((output / "training_args.json").read_text())
    assert (saved["patchout_time"], saved["patchout_freq"], saved["patchout_random"]) == (3, 4, 0.1)
    assert all(saved["hyperparameter_sources"][name] == "flag"
               for name in ("patchout_time", "patchout_freq", "patchout_random"))
    config = json.loads((output / "config.json").read_text())
    assert (config["patchout_time"], config["patchout_freq"], config["patchout_random"]) == (0, 0, 0)
    assert HfAstForAudioClassification.from_pretrained(output).config.patchout_time == 0


def test_script_leaves_patchout_off_and_says_so():
    args = load_script().parse_args(["--dataset_name", "x", "--output_dir", "y", "--recipe", "audioset"])
    assert (args.patchout_time, args.patchout_freq, args.patchout_random) == (0, 0, 0)
    assert args.hyperparameter_sources["patchout_time"].startswith("recipe audioset: off")


def test_script_stops_before_training_on_patchout_that_leaves_no_patches(run_inputs, tmp_path):
    output = tmp_path / "run"
    with pytest.raises(ValueError, match="patchout_time=9, but the patch grid has 9 time columns"):
        load_script().main(argv(run_inputs, output, "--patchout_time", "9"))  # 98 frames: 9 columns
    assert not (output / "training_args.json").exists()
