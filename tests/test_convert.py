"""`hf-ast-convert` (`hf_ast.conversion.cli`) run in-process on tiny sources, outputs checked against independent
references."""

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTForAudioClassification,
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
)

import hf_ast
from hf_ast import HfAstFeatureExtractor, HfAstForAudioClassification
from hf_ast.conversion.cli import main, staged_output_folder

HIDDEN, LAYERS, HEADS, MLP = 32, 2, 2, 64
TINY = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=MLP)
AST = "audio_spectrogram_transformer."
# Speech Commands statistics: anything but the AudioSet defaults, so copying them is tested.
MEAN, STD = -6.845978, 5.5654526
ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def randomize_(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module.eval()


def spectrogram(frames=128, seed=0):
    return torch.randn(2, frames, 128, generator=torch.Generator().manual_seed(seed))


def write_audioset_csv(path, names):
    lines = ["index,mid,display_name"] + [f'{i},/m/{i:04d},"{name}"' for i, name in enumerate(names)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_help_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "hf_ast.conversion.cli", "--help"], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for command in ("deit", "original", "transformers", "to-transformers"):
        assert command in result.stdout


def test_every_flag_has_help(capsys):
    for command in ("deit", "original", "transformers", "to-transformers"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        # argparse prints a flag's help on its line or the next; a flag with no help would stand alone
        lines = text.splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith("--") and "  " not in stripped:
                assert i + 1 < len(lines) and lines[i + 1].startswith(" " * 20), f"{command}: {stripped} has no help"


# -- deit ----------------------------------------------------------------------------------------


def tiny_deit(directory):
    deit = randomize_(DeiTForImageClassificationWithTeacher(DeiTConfig(**TINY, image_size=384, num_labels=3)))
    deit.save_pretrained(directory)
    return load_file(directory / "model.safetensors")


def test_deit_subcommand(tmp_path):
    source = tiny_deit(tmp_path / "deit")
    out = tmp_path / "out"
    main(["deit", str(tmp_path / "deit"), str(out), "--max-length", "128", "--labels", "dog,rain,siren",
          "--channel-reduction", "sum", "--mean", str(MEAN), "--std", str(STD)])

    model = AutoModelForAudioClassification.from_pretrained(out)
    assert isinstance(model, HfAstForAudioClassification)
    assert model.config.id2label == {0: "dog", 1: "rain", 2: "siren"} and model.config.max_length == 128
    state = model.state_dict()
    kernel = source["deit.embeddings.patch_embeddings.projection.weight"]
    assert torch.allclose(state[AST + "embeddings.patch_embeddings.projection.weight"], kernel.sum(1, keepdim=True))
    for name, tensor in source.items():
        if name.startswith("deit.encoder."):
            assert torch.equal(state[AST + name[len("deit."):]], tensor), name
    # the backbone is deterministic: the saved one equals a fresh from_deit
    fresh = HfAstForAudioClassification.from_deit(tmp_path / "deit", max_length=128, channel_reduction="sum")
    with torch.no_grad():
        expected = fresh.audio_spectrogram_transformer(spectrogram()).pooler_output
        assert torch.allclose(model.audio_spectrogram_transformer(spectrogram()).pooler_output, expected, atol=1e-5)

    features = AutoFeatureExtractor.from_pretrained(out)
    assert isinstance(features, HfAstFeatureExtractor)
    assert (features.max_length, features.num_mel_bins, features.mean, features.std) == (128, 128, MEAN, STD)


def test_deit_subcommand_label_file_and_label_flags(tmp_path):
    tiny_deit(tmp_path / "deit")
    labels = write_audioset_csv(tmp_path / "labels.csv", ["Speech", "Dog, barking", "Music"])
    main(["deit", str(tmp_path / "deit"), str(tmp_path / "a"), "--max-length", "128", "--label-file", str(labels)])
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["id2label"] == {"0": "Speech", "1": "Dog, barking", "2": "Music"}

    plain = tmp_path / "plain.txt"
    plain.write_text("yes\nno\n\n", encoding="utf-8")
    main(["deit", str(tmp_path / "deit"), str(tmp_path / "b"), "--max-length", "128", "--label-file", str(plain)])
    assert json.loads((tmp_path / "b" / "config.json").read_text())["label2id"] == {"yes": 0, "no": 1}

    with pytest.raises(SystemExit):  # the new head's size must be chosen
        main(["deit", str(tmp_path / "deit"), str(tmp_path / "c")])
    with pytest.raises(SystemExit):  # one way to give labels
        main(["deit", str(tmp_path / "deit"), str(tmp_path / "c"), "--labels", "a,b", "--num-labels", "2"])


# -- original (YuanGongND/ast) -------------------------------------------------------------------


def reference_ast(num_labels=3, frequency_patches=12, time_patches=12, seed=3):
    """The reference repository's model surgery on a tiny timm DeiT: 1-channel stride-10 conv, new grid, mlp_head."""
    v = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, embed_dim=HIDDEN, depth=LAYERS, num_heads=HEADS,
        mlp_ratio=MLP / HIDDEN,
    )
    v.patch_embed.proj = nn.Conv2d(1, HIDDEN, kernel_size=(16, 16), stride=(10, 10))
    v.pos_embed = nn.Parameter(torch.zeros(1, 2 + frequency_patches * time_patches, HIDDEN))
    mlp_head = nn.Sequential(nn.LayerNorm(HIDDEN), nn.Linear(HIDDEN, num_labels))  # eps 1e-5, as in the reference
    randomize_(v, seed)
    randomize_(mlp_head, seed + 1)
    # nn.DataParallel names, as the reference's training script saves them
    state = {"module.v." + name: tensor.clone() for name, tensor in v.state_dict().items()}
    state.update({"module.mlp_head." + name: tensor.clone() for name, tensor in mlp_head.state_dict().items()})
    return v, mlp_head, state


@torch.no_grad()
def reference_forward(v, mlp_head, input_values):
    """ASTModel.forward of the reference repository, written with the timm modules."""
    x = input_values.unsqueeze(1).transpose(2, 3)  # (B, 1, F, T)
    x = v.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, f*t, C)
    batch = x.shape[0]
    x = torch.cat([v.cls_token.expand(batch, -1, -1), v.dist_token.expand(batch, -1, -1), x], dim=1) + v.pos_embed
    for block in v.blocks:
        x = block(x)
    x = v.norm(x)
    return mlp_head((x[:, 0] + x[:, 1]) / 2)


def test_original_subcommand_maps_every_tensor(tmp_path):
    v, mlp_head, source = reference_ast()
    assert "module.v.head_dist.weight" in source  # the unused ImageNet heads the reference keeps
    checkpoint = tmp_path / "audioset.pth"
    torch.save(source, checkpoint)
    labels = write_audioset_csv(tmp_path / "class_labels_indices.csv", ["Speech", "Music", "Silence"])
    out = tmp_path / "out"
    main(["original", str(checkpoint), str(out), "--max-length", "128", "--num-attention-heads", str(HEADS),
          "--label-file", str(labels)])

    model = HfAstForAudioClassification.from_pretrained(out)
    assert model.config.id2label == {0: "Speech", 1: "Music", 2: "Silence"}
    assert model.config.layer_norm_eps == 1e-6  # timm's
    assert model.config.classifier_layer_norm_eps == 1e-5 and model.classifier.layernorm.eps == 1e-5  # the head's
    state = model.state_dict()
    # every tensor at the right key: checked from the source side
    c = HIDDEN
    checked = set()
    for layer in range(LAYERS):
        block, target = f"module.v.blocks.{layer}.", f"{AST}encoder.layer.{layer}."
        for kind in ("weight", "bias"):
            qkv = source[f"{block}attn.qkv.{kind}"]
            for i, part in enumerate(("query", "key", "value")):
                assert torch.equal(state[f"{target}attention.attention.{part}.{kind}"], qkv[i * c : (i + 1) * c])
            checked.add(f"{block}attn.qkv.{kind}")
            for timm_name, ast_name in (("attn.proj", "attention.output.dense"), ("norm1", "layernorm_before"),
                                        ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"),
                                        ("mlp.fc2", "output.dense")):
                assert torch.equal(state[f"{target}{ast_name}.{kind}"], source[f"{block}{timm_name}.{kind}"])
                checked.add(f"{block}{timm_name}.{kind}")
    pairs = {
        "module.v.cls_token": AST + "embeddings.cls_token",
        "module.v.dist_token": AST + "embeddings.distillation_token",
        "module.v.pos_embed": AST + "embeddings.position_embeddings",  # kept as is: no re-gridding
        "module.v.patch_embed.proj.weight": AST + "embeddings.patch_embeddings.projection.weight",
        "module.v.patch_embed.proj.bias": AST + "embeddings.patch_embeddings.projection.bias",
        "module.v.norm.weight": AST + "layernorm.weight",
        "module.v.norm.bias": AST + "layernorm.bias",
        "module.mlp_head.0.weight": "classifier.layernorm.weight",
        "module.mlp_head.0.bias": "classifier.layernorm.bias",
        "module.mlp_head.1.weight": "classifier.dense.weight",
        "module.mlp_head.1.bias": "classifier.dense.bias",
    }
    for name, target in pairs.items():
        assert torch.equal(state[target], source[name]), name
    checked |= set(pairs)
    unused = {name for name in source if name.startswith(("module.v.head.", "module.v.head_dist."))}
    assert checked | unused == set(source)
    assert len(state) == len(checked) + 2 * 2 * LAYERS  # qkv weight and bias fan out into three tensors each

    # and the reference forward (timm blocks, head LayerNorm eps 1e-5) gives the same logits
    input_values = spectrogram()
    with torch.no_grad():
        logits = model(input_values).logits
    assert torch.allclose(logits, reference_forward(v, mlp_head, input_values), atol=1e-4)
    assert HfAstFeatureExtractor.from_pretrained(out).max_length == 128


def test_original_subcommand_checks_the_geometry(tmp_path):
    _, _, source = reference_ast()
    checkpoint = tmp_path / "audioset.pth"
    torch.save(source, checkpoint)
    # default 1024 frames -> 12 x 101 grid, but the checkpoint has 2 + 12 x 12 rows: lengths 126..135 fit
    with pytest.raises(ValueError, match=r"146 rows.*max_length 126 to 135"):
        main(["original", str(checkpoint), str(tmp_path / "out"), "--num-attention-heads", str(HEADS)])


def test_original_subcommand_rejects_unknown_tensors(tmp_path):
    _, _, source = reference_ast()
    source["module.v.blocks.0.ls1.gamma"] = torch.ones(HIDDEN)
    checkpoint = tmp_path / "audioset.pth"
    torch.save(source, checkpoint)
    with pytest.raises(ValueError, match=r"module\.v\.blocks\.0\.ls1\.gamma"):
        main(["original", str(checkpoint), str(tmp_path / "out"), "--max-length", "128",
              "--num-attention-heads", str(HEADS)])


# -- transformers AST <-> hf-ast ------------------------------------------------------------------


def tiny_transformers_ast(directory, seed=4):
    config = ASTConfig(**TINY, max_length=128, id2label={0: "left", 1: "right", 2: "stop"},
                       label2id={"left": 0, "right": 1, "stop": 2})
    model = randomize_(ASTForAudioClassification(config), seed)
    model.save_pretrained(directory)
    ASTFeatureExtractor(max_length=128, mean=MEAN, std=STD).save_pretrained(directory)
    return model


def test_transformers_subcommand(tmp_path):
    reference = tiny_transformers_ast(tmp_path / "src")
    out = tmp_path / "out"
    main(["transformers", str(tmp_path / "src"), str(out)])

    model = HfAstForAudioClassification.from_pretrained(out)
    assert model.config.id2label == {0: "left", 1: "right", 2: "stop"}
    assert model.config.max_length == 128
    input_values = spectrogram()
    with torch.no_grad():
        assert torch.allclose(model(input_values).logits, reference(input_values).logits, atol=1e-4)
    features = HfAstFeatureExtractor.from_pretrained(out)
    assert (features.max_length, features.mean, features.std) == (128, MEAN, STD)


def test_transformers_subcommand_accepts_in_memory_names(tmp_path):
    reference = tiny_transformers_ast(tmp_path / "src")
    current = reference.state_dict()  # transformers 5's names: layers.N.attention.q_proj, mlp.fc1, ...
    assert any(".q_proj." in name for name in current)
    save_file({name: tensor.contiguous() for name, tensor in current.items()},
              str(tmp_path / "src" / "model.safetensors"))
    main(["transformers", str(tmp_path / "src"), str(tmp_path / "out")])
    model = HfAstForAudioClassification.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        assert torch.allclose(model(spectrogram()).logits, reference(spectrogram()).logits, atol=1e-4)


def test_to_transformers_subcommand(tmp_path):
    config = hf_ast.HfAstConfig(**TINY, max_length=128, id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})
    source = randomize_(HfAstForAudioClassification(config), seed=5)
    source.save_pretrained(tmp_path / "src")
    HfAstFeatureExtractor(max_length=128, mean=MEAN, std=STD).save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    main(["to-transformers", str(tmp_path / "src"), str(out)])

    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "audio-spectrogram-transformer" and "auto_map" not in saved
    assert not list(out.glob("*.py"))  # nothing for remote code
    model, info = ASTForAudioClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.id2label == {0: "a", 1: "b"}
    input_values = spectrogram()
    with torch.no_grad():
        assert torch.allclose(model(input_values).logits, source(input_values).logits, atol=1e-4)
    features = ASTFeatureExtractor.from_pretrained(out)
    assert (features.max_length, features.num_mel_bins, features.mean, features.std) == (128, 128, MEAN, STD)


def test_transformers_round_trip_keeps_every_tensor(tmp_path):
    tiny_transformers_ast(tmp_path / "src")
    main(["transformers", str(tmp_path / "src"), str(tmp_path / "hf")])
    main(["to-transformers", str(tmp_path / "hf"), str(tmp_path / "back")])
    before = load_file(tmp_path / "src" / "model.safetensors")
    after = load_file(tmp_path / "back" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


# -- output folders and sources -------------------------------------------------------------------

COMMANDS = ("deit", "original", "transformers", "to-transformers")
# Another model's files in the output folder: save_pretrained deletes shards named like these when
# it saves unsharded weights into that folder.
OTHER_MODEL = {
    "model-00001-of-00002.safetensors": b"shard 1 of another model",
    "model-00002-of-00002.safetensors": b"shard 2 of another model",
    "model.safetensors.index.json": b'{"metadata": {}, "weight_map": {}}',
    "config.json": b'{"model_type": "another"}',
    "modeling_other.py": b"# another model's code",
    "notes.txt": b"keep me",
}


def write_other_model(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in OTHER_MODEL.items():
        (folder / name).write_bytes(content)


def files_in(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def source_for(command, tmp_path):
    """A tiny source for `command` and the flags its conversion needs."""
    if command == "deit":
        tiny_deit(tmp_path / "deit")
        return tmp_path / "deit", ["--max-length", "128", "--num-labels", "3"]
    if command == "original":
        torch.save(reference_ast()[2], tmp_path / "audioset.pth")
        return tmp_path / "audioset.pth", ["--max-length", "128", "--num-attention-heads", str(HEADS)]
    if command == "transformers":
        tiny_transformers_ast(tmp_path / "src")
        return tmp_path / "src", []
    config = hf_ast.HfAstConfig(**TINY, max_length=128, num_labels=2)
    randomize_(HfAstForAudioClassification(config), seed=5).save_pretrained(tmp_path / "src")
    return tmp_path / "src", []


@pytest.mark.parametrize("command", COMMANDS)
def test_non_empty_output_folder_is_refused_and_left_as_it_was(tmp_path, command):
    source, flags = source_for(command, tmp_path)
    out = tmp_path / "other-model"
    write_other_model(out)
    with pytest.raises(FileExistsError, match=r"other-model is not empty .*--overwrite"):
        main([command, str(source), str(out), *flags])
    assert files_in(out) == OTHER_MODEL


@pytest.mark.parametrize("command", COMMANDS)
def test_overwrite_replaces_only_the_files_the_command_writes(tmp_path, command):
    source, flags = source_for(command, tmp_path)
    torch.manual_seed(0)  # deit draws a new head
    main([command, str(source), str(tmp_path / "fresh"), *flags])
    written = files_in(tmp_path / "fresh")
    out = tmp_path / "other-model"
    write_other_model(out)

    torch.manual_seed(0)
    main([command, str(source), str(out), *flags, "--overwrite"])

    after = files_in(out)
    assert set(after) == set(written) | set(OTHER_MODEL)
    for name, content in OTHER_MODEL.items():  # the other model's shards, index and notes survive
        if name not in written:
            assert after[name] == content, name
    for name, content in written.items():  # what the command writes is what it writes into an empty folder
        if name.endswith(".safetensors"):
            expected, got = load_file(tmp_path / "fresh" / name), load_file(out / name)
            assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
        else:
            assert after[name] == content, name
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []  # no staging left
    # the kept shard index does not get in the way: transformers reads model.safetensors first
    model_class = ASTForAudioClassification if command == "to-transformers" else HfAstForAudioClassification
    loaded, expected = model_class.from_pretrained(out), model_class.from_pretrained(tmp_path / "fresh")
    with torch.no_grad():
        assert torch.equal(loaded(spectrogram()).logits, expected(spectrogram()).logits)


@pytest.mark.parametrize("command", ["transformers", "to-transformers"])
def test_output_folder_that_is_the_input_is_refused_even_with_overwrite(tmp_path, command, monkeypatch):
    source, _ = source_for(command, tmp_path)
    before = files_in(source)
    for flags in ([], ["--overwrite"]):
        with pytest.raises(ValueError, match=r"is the input .*choose another output folder"):
            main([command, str(source), str(source), *flags])
        monkeypatch.chdir(source.parent)  # the same folder spelt another way
        with pytest.raises(ValueError, match=r"is the input"):
            main([command, f"./{source.name}/", source.name, *flags])
    assert files_in(source) == before


def test_failed_conversion_leaves_the_output_folder_as_it_was(tmp_path, monkeypatch):
    source, _ = source_for("to-transformers", tmp_path)

    def disagree(*args, **kwargs):
        raise RuntimeError("logits differ")

    monkeypatch.setattr("hf_ast.conversion.cli.check_same_logits", disagree)
    with pytest.raises(RuntimeError, match="logits differ"):  # checked after the files are written
        main(["to-transformers", str(source), str(tmp_path / "new" / "out")])
    assert not (tmp_path / "new").exists()
    write_other_model(tmp_path / "other-model")
    with pytest.raises(RuntimeError, match="logits differ"):
        main(["to-transformers", str(source), str(tmp_path / "other-model"), "--overwrite"])
    assert files_in(tmp_path / "other-model") == OTHER_MODEL
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other-model", "src"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("missing", ["./missing", "missing/deeper/folder", "audioset.pth", "{tmp}/missing"])
def test_missing_local_source_is_named_as_a_path(tmp_path, monkeypatch, command, missing):
    monkeypatch.chdir(tmp_path)
    missing = missing.format(tmp=tmp_path)
    flags = ["--num-labels", "3"] if command == "deit" else []
    with pytest.raises(FileNotFoundError, match=f"no such file or folder: {re.escape(missing)}"):
        main([command, missing, str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["missing-model", "someone/missing-model"])
def test_missing_name_that_could_be_a_hub_id_names_both(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # HF_HUB_OFFLINE=1 (conftest): the Hub is not asked
    with pytest.raises(FileNotFoundError, match=rf"no such file or folder: {name} .*Hub repository {name}"):
        main(["transformers", name, str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_staged_files_reach_an_output_folder_on_another_filesystem(tmp_path, monkeypatch):
    out = tmp_path / "mounted"
    write_other_model(out)

    def cross_device(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(source))

    with staged_output_folder(out) as staging:
        (staging / "config.json").write_text("{}")
        monkeypatch.setattr(os, "replace", cross_device)  # as when OUT is a mount point
    monkeypatch.undo()
    assert files_in(out) == {**OTHER_MODEL, "config.json": b"{}"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mounted"]
