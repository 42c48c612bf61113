"""Convert AST checkpoints to hf-ast model directories, and hf-ast back to plain transformers.

    # ImageNet DeiT -> AST to fine-tune on AudioSet (527 labels from the standard csv)
    hf-ast-convert deit facebook/deit-base-distilled-patch16-384 ast-imagenet --label-file class_labels_indices.csv
    # the reference repository's trained checkpoint (YuanGongND/ast)
    hf-ast-convert original audioset_10_10_0.4593.pth ast-audioset --label-file class_labels_indices.csv
    # a transformers AST checkpoint (MIT/ast-finetuned-*)
    hf-ast-convert transformers MIT/ast-finetuned-audioset-10-10-0.4593 ast-0.4593
    # hf-ast -> a transformers ASTForAudioClassification directory (no remote code needed)
    hf-ast-convert to-transformers ast-0.4593 ast-0.4593-plain

Reading and saving live here; the conversions are the pure functions of `hf_ast.conversion.deit`
and `hf_ast.conversion.ast_checkpoints`. Every subcommand writes `save_pretrained` output: config,
safetensors weights and a feature extractor whose `max_length`/`num_mel_bins` match the model.

OUT must be new or empty unless `--overwrite` is given, and may never be SRC. The files are
written to a staging folder next to OUT and moved in once complete, so a failed conversion leaves
OUT as it was, and `--overwrite` replaces only the files the command writes (saving straight into
OUT would let `save_pretrained` delete another model's `model-0000N-of-0000M` shards there).
"""

import argparse
import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers.utils import logging as hf_logging

from ..configuration_hf_ast import HfAstConfig
from ..feature_extraction_hf_ast import AUDIOSET_MEAN, AUDIOSET_STD, HfAstFeatureExtractor
from ..labels import label_maps, read_label_list
from ..modeling_hf_ast import HfAstForAudioClassification
from .ast_checkpoints import (
    hf_ast_config_from_transformers,
    hf_ast_config_to_transformers,
    original_ast_state_dict_to_hf_ast,
    transformers_ast_state_dict_to_hf_ast,
)
from .deit import CHANNEL_REDUCTIONS
from .state_dicts import detect_source_format, load_checkpoint, source_not_found

logger = hf_logging.get_logger(__name__)

# Logit agreement demanded between hf-ast and transformers' AST on the same weights and input.
LOGITS_ATOL = 1e-4
_FEATURE_FIELDS = ("sampling_rate", "mean", "std", "do_normalize")


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


def parse_labels(text: str) -> list[str]:
    """`--labels dog,rain,siren` -> names in class-id order."""
    labels = [label.strip() for label in text.split(",") if label.strip()]
    if not labels:
        raise ValueError(f"--labels {text!r} holds no labels; pass comma-separated names such as dog,cat,rain.")
    return labels


def _labels_from_args(args) -> dict:
    """`--labels` / `--label-file` / `--num-labels` -> config overrides."""
    if getattr(args, "labels", None):
        names = parse_labels(args.labels)
    elif getattr(args, "label_file", None):
        names = read_label_list(args.label_file).names  # AudioSet csv: the display names, in class-id order
    elif getattr(args, "num_labels", None):
        return {"num_labels": args.num_labels}
    else:
        return {}
    if len(set(names)) != len(names):
        raise ValueError("label names must be unique: label2id maps each name to one index.")
    id2label, label2id = label_maps(names)
    return {"id2label": id2label, "label2id": label2id}




# ---------------------------------------------------------------------------------------------
# Checks and saving
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def check_same_logits(model, reference, config, what: str):
    """Both models on one random full-length input; raise if their logits differ by more than LOGITS_ATOL."""
    generator = torch.Generator().manual_seed(0)
    input_values = torch.randn(2, config.max_length, config.num_mel_bins, generator=generator)
    logits = model.eval()(input_values).logits
    expected = reference.eval()(input_values).logits
    difference = (logits - expected).abs().max().item()
    if difference > LOGITS_ATOL:
        raise RuntimeError(f"{what}: logits differ by {difference:.3g} (> {LOGITS_ATOL}); the conversion is wrong.")
    logger.info(f"{what}: logits agree (max difference {difference:.2g})")


def check_output_folder(out, sources=(), overwrite: bool = False) -> None:
    """Refuse an output folder that is or holds one of `sources`, or (without `overwrite`) holds anything.

    The first holds even with `overwrite`: the input would be replaced while it is being read.
    Sources that do not exist locally (Hub ids) are skipped.
    """
    target = Path(out).resolve()
    for source in sources:
        if not os.path.exists(source):
            continue
        source_path = Path(source).resolve()
        if source_path == target or target in source_path.parents:
            relation = "is" if source_path == target else "holds"
            raise ValueError(
                f"the output folder {out} {relation} the input {source}: writing there would replace the input while "
                "it is read; choose another output folder (--overwrite does not allow this)."
            )
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"the output {out} is a file; pass a folder to write the model to.")
    names = sorted(os.listdir(out)) if os.path.isdir(out) else []
    if names and not overwrite:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise FileExistsError(
            f"the output folder {out} is not empty (it holds {shown}); choose a new or empty folder, or pass "
            "--overwrite to replace the files this command writes there (every other file is kept)."
        )


def _move_into(staging: Path, out: Path):
    """Move the staged files into `out`, replacing files of the same name and touching no other."""
    if not out.exists():
        staging.rename(out)  # one step: OUT appears complete or not at all
        return
    for path in sorted(staging.rglob("*")):  # sorted: a folder comes before its files
        target = out / path.relative_to(staging)
        if path.is_dir():
            target.mkdir(exist_ok=True)
            continue
        try:
            os.replace(path, target)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            shutil.copy2(path, target)  # OUT is a mount point: another filesystem than the staging folder
    shutil.rmtree(staging)


@contextlib.contextmanager
def staged_output_folder(out):
    """Yield an empty folder next to `out`; when the block succeeds, move its files into `out`.

    When the block fails, the staging folder (and any parent folder created for `out`) is removed
    and `out` is left as it was. Files already in `out` are replaced only by files of the same name;
    the others are kept, and logged, since a loader may still read them (a stale shard index, say).
    """
    out = Path(os.path.abspath(out))
    created = [parent for parent in out.parents if not parent.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, and named after OUT and this process, so a leftover one (after a kill -9) says what it is.
    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(3)}"
    staging.mkdir()
    try:
        yield staging
        written = set(os.listdir(staging))
        _move_into(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in created:
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    kept = sorted(set(os.listdir(out)) - written)
    if kept:
        logger.warning(f"{out} also holds files this command did not write, kept as they were: {', '.join(kept)}")


def feature_extractor_for(config: HfAstConfig, **fields) -> HfAstFeatureExtractor:
    """An `HfAstFeatureExtractor` whose frame count and mel bins match the model."""
    return HfAstFeatureExtractor(max_length=config.max_length, num_mel_bins=config.num_mel_bins, **fields)


def save_hf_ast(model: HfAstForAudioClassification, feature_extractor: HfAstFeatureExtractor, out):
    model.save_pretrained(out)
    feature_extractor.save_pretrained(out)


def _feature_fields_from(name_or_path, **hub_kwargs) -> dict:
    """Sampling rate and normalisation of a source's preprocessor_config.json, if it has one."""
    from transformers.utils.hub import cached_file

    file = cached_file(
        str(name_or_path), "preprocessor_config.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs
    )
    if file is None:
        return {}
    saved = json.loads(Path(file).read_text(encoding="utf-8"))
    return {name: saved[name] for name in _FEATURE_FIELDS if name in saved}


def _geometry(args) -> dict:
    return {
        "max_length": args.max_length,
        "num_mel_bins": args.num_mel_bins,
        "frequency_stride": args.fstride,
        "time_stride": args.tstride,
    }


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------


def convert_deit(args):
    check_output_folder(args.out, [args.src], args.overwrite)
    overrides = {**_geometry(args), **_labels_from_args(args)}
    if args.num_attention_heads is not None:
        overrides["num_attention_heads"] = args.num_attention_heads
    if args.problem_type is not None:
        overrides["problem_type"] = args.problem_type
    with source_not_found(args.src):
        model = HfAstForAudioClassification.from_deit(args.src, channel_reduction=args.channel_reduction, **overrides)
    with staged_output_folder(args.out) as staging:
        save_hf_ast(model, feature_extractor_for(model.config, mean=args.mean, std=args.std), staging)
    logger.info(f"saved hf-ast model and feature extractor to {args.out}")


def convert_original(args):
    check_output_folder(args.out, [args.src], args.overwrite)
    with source_not_found(args.src):
        state_dict, _ = load_checkpoint(args.src)
    if detect_source_format(state_dict) != "original-ast":
        raise ValueError(f"{args.src} is not a YuanGongND/ast checkpoint (module.v.*, module.mlp_head.*).")
    labels = _labels_from_args(args)
    converted, config = original_ast_state_dict_to_hf_ast(
        state_dict,
        **_geometry(args),
        num_attention_heads=args.num_attention_heads,
        id2label=labels.get("id2label"),
    )
    if args.problem_type is not None:
        config.problem_type = args.problem_type
    model = HfAstForAudioClassification(config)
    model.load_state_dict(converted, strict=True)
    with staged_output_folder(args.out) as staging:
        save_hf_ast(model, feature_extractor_for(config, mean=args.mean, std=args.std), staging)
    logger.info(f"saved hf-ast model and feature extractor to {args.out}")


def convert_transformers(args):
    from transformers import ASTForAudioClassification

    check_output_folder(args.out, [args.src], args.overwrite)
    hub_kwargs = {"revision": args.revision} if args.revision else {}
    with source_not_found(args.src):
        state_dict, config_dict = load_checkpoint(args.src, **hub_kwargs)
    if config_dict is None:
        raise ValueError(f"{args.src} has no config.json; pass a transformers AST model directory or Hub id.")
    config = hf_ast_config_from_transformers(config_dict)
    converted = transformers_ast_state_dict_to_hf_ast(state_dict, config)
    model = HfAstForAudioClassification(config)
    model.load_state_dict(converted, strict=True)
    reference = ASTForAudioClassification.from_pretrained(args.src, attn_implementation="eager", **hub_kwargs)
    check_same_logits(model, reference, config, f"{args.src} in hf-ast vs transformers")
    features = feature_extractor_for(config, **_feature_fields_from(args.src, **hub_kwargs))
    with staged_output_folder(args.out) as staging:
        save_hf_ast(model, features, staging)
    logger.info(f"saved hf-ast model and feature extractor to {args.out}")


def convert_to_transformers(args):
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    check_output_folder(args.out, [args.src], args.overwrite)
    with source_not_found(args.src):
        model = HfAstForAudioClassification.from_pretrained(args.src, attn_implementation="eager")
    with staged_output_folder(args.out) as out:
        # The hf-ast names are the released transformers names: write them under an ASTConfig and let
        # transformers' own loader (with its renaming to in-memory names) prove that they fit.
        hf_ast_config_to_transformers(model.config).save_pretrained(out)
        state_dict = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state_dict, str(out / "model.safetensors"), metadata={"format": "pt"})
        reference, info = ASTForAudioClassification.from_pretrained(
            out, attn_implementation="eager", output_loading_info=True
        )
        kinds = ("missing_keys", "unexpected_keys", "mismatched_keys")
        problems = {kind: info[kind] for kind in kinds if info.get(kind)}
        if problems:
            raise RuntimeError(
                f"transformers' ASTForAudioClassification does not load the converted weights: {problems}"
            )
        check_same_logits(reference, model, model.config, f"{args.src} in transformers vs hf-ast")

        # Same normalisation and rate as the source's extractor (AudioSet defaults where it has none).
        fields = _feature_fields_from(args.src)
        features = ASTFeatureExtractor(
            max_length=model.config.max_length, num_mel_bins=model.config.num_mel_bins, **fields
        )
        features.save_pretrained(out)
    logger.info(f"saved transformers ASTForAudioClassification and ASTFeatureExtractor to {args.out}")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _add_geometry(parser):
    parser.add_argument("--max-length", type=int, default=1024,
                        help="spectrogram frames the position grid is built for (default 1024 = 10.24 s, AudioSet)")
    parser.add_argument("--num-mel-bins", type=int, default=128, help="mel bins of the input filterbank (default 128)")
    parser.add_argument("--fstride", type=int, default=10,
                        help="patch stride along frequency (default 10: 16x16 patches overlapping by 6)")
    parser.add_argument("--tstride", type=int, default=10, help="patch stride along time (default 10)")


def _add_labels(parser, with_list: bool):
    group = parser.add_mutually_exclusive_group(required=with_list)
    if with_list:
        group.add_argument("--labels", help="comma-separated class names for the new head, e.g. dog,rain,siren")
        group.add_argument("--num-labels", type=int, help="size of the new head, with generic names LABEL_0, ...")
    group.add_argument("--label-file", help="class names: AudioSet's class_labels_indices.csv "
                                            "(index,mid,display_name) or a text file with one name per line")


def _add_output(parser, what: str):
    parser.add_argument("out", help=f"output directory for the {what}: new or empty, unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty OUT: replace the files this command writes and keep every "
                             "other file (never allowed when OUT is SRC or holds it)")


def _add_common(parser):
    parser.add_argument("--num-attention-heads", type=int, default=None,
                        help="heads per layer for a bare timm/reference state dict, which does not record them "
                             "(default: hidden size / 64, timm's DeiT)")
    parser.add_argument("--problem-type", choices=["single_label_classification", "multi_label_classification"],
                        default=None, help="loss of the saved config: cross-entropy or BCE (AudioSet is multi-label)")
    parser.add_argument("--mean", type=float, default=AUDIOSET_MEAN,
                        help=f"feature normalisation mean of the saved extractor (default AudioSet {AUDIOSET_MEAN})")
    parser.add_argument("--std", type=float, default=AUDIOSET_STD,
                        help=f"feature normalisation std of the saved extractor (default AudioSet {AUDIOSET_STD})")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hf-ast-convert",
        description="Convert DeiT/ViT, reference-repository and transformers AST checkpoints to hf-ast model "
                    "directories, and hf-ast to plain transformers.",
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    deit = subcommands.add_parser("deit", help="initialise an AST from an ImageNet DeiT/ViT (transformers or timm)",
                                  description="Initialise an AST from an ImageNet DeiT/ViT: the paper's recipe.")
    deit.add_argument("src",
                      help="transformers DeiT/ViT directory or Hub id, or a timm state dict (.pth/.safetensors)")
    _add_output(deit, "hf-ast model")
    _add_geometry(deit)
    deit.add_argument("--channel-reduction", choices=CHANNEL_REDUCTIONS, default="mean",
                      help="RGB -> 1-channel patch kernels: mean (the paper's wording) or sum (the reference code)")
    _add_labels(deit, with_list=True)
    _add_common(deit)

    original = subcommands.add_parser("original", help="convert a YuanGongND/ast checkpoint (.pth)",
                                      description="Convert a checkpoint of the reference repository (YuanGongND/ast).")
    original.add_argument("src", help="reference checkpoint, e.g. audioset_10_10_0.4593.pth")
    _add_output(original, "hf-ast model")
    _add_geometry(original)
    _add_labels(original, with_list=False)
    _add_common(original)

    transformers_ = subcommands.add_parser("transformers", help="convert a transformers AST checkpoint",
                                           description="Convert a transformers AST (ASTForAudioClassification).")
    transformers_.add_argument(
        "src", help="transformers AST directory or Hub id, e.g. MIT/ast-finetuned-audioset-10-10-0.4593"
    )
    _add_output(transformers_, "hf-ast model")
    transformers_.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of SRC")

    to_transformers = subcommands.add_parser(
        "to-transformers", help="export hf-ast to transformers' ASTForAudioClassification",
        description="Write a plain transformers AST directory (loads with no remote code).",
    )
    to_transformers.add_argument("src", help="hf-ast model directory or Hub id")
    _add_output(to_transformers, "transformers model")

    args = parser.parse_args(argv)
    for name in ("max_length", "num_mel_bins", "fstride", "tstride", "num_attention_heads", "num_labels"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if getattr(args, "std", 1.0) <= 0:
        parser.error(f"--std must be positive, got {args.std}")
    return args


COMMANDS = {
    "deit": convert_deit,
    "original": convert_original,
    "transformers": convert_transformers,
    "to-transformers": convert_to_transformers,
}


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("hf_ast").setLevel(logging.INFO)
    COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
