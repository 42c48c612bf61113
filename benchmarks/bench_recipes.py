"""Does the plain training command learn on data nobody tuned it for? hf-ast `auto` against a plain loop.

For each shape of data, in one run:

  hf-ast      the command a new user types, nothing tuned:
                  python examples/run_audioset.py --dataset_name DATA --model_name_or_path DEIT \\
                      --output_dir OUT --learning_rate LR --num_train_epochs E --per_device_train_batch_size B
              (recipe `auto`: everything else derived from the data and the run)
  plain loop  a plain PyTorch loop around transformers' `ASTForAudioClassification` and
              `ASTFeatureExtractor` (AudioSet normalisation, padded to the longest clip): AdamW
              (weight decay 0.01), 5% linear warm-up then cosine decay, cross-entropy or BCE, no
              augmentation, the same epochs, batch and learning rate

Both start from the same weights: one small DeiT-shaped image checkpoint with random weights
(ImageNet weights cannot be downloaded offline), turned into an AST by `from_deit` (channel mean),
saved in transformers' format for the loop. Shapes (all written as `audiofolder`s):

  words      spoken digits at 16 kHz, 1 s, held-out voices (espeak-ng voice variants never heard in training)
  events     the generated multi-label sound events (`hf_ast.training.synthetic`), 2 s, held-out pitches and rates
  speech8k   spoken digits recorded at 8 kHz (espeak-ng, resampled by sox), held-out voices

The target: the plain command within 0.03 of the plain loop (accuracy or mAP), or better, on every
shape. Prints a table; `--json` writes the figures.

    python benchmarks/bench_recipes.py [--quick] [--shapes words,events,speech8k] [--epochs 10] [--seeds 0,1,2]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ("words", "events", "speech8k")


def make_shape(shape: str, directory: Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """Write one data shape as an audiofolder under `directory` and return its root."""
    from hf_ast.training.synthetic import write_sound_events_audiofolder, write_spoken_words_audiofolder

    root = directory / shape
    if shape == "events":
        write_sound_events_audiofolder(root, num_train, num_test, seed=seed, duration_s=2.0)
    elif shape == "words":
        write_spoken_words_audiofolder(root, num_train, num_test, seed=seed, sampling_rate=16000)
    elif shape == "speech8k":
        write_spoken_words_audiofolder(root, num_train, num_test, seed=seed + 1, sampling_rate=8000)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    return root


def build_deit(directory: Path, hidden_size: int = 192, layers: int = 4) -> Path:
    """A distilled DeiT at 384 px / 16 px patches (24x24 position grid) with random weights."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    config = DeiTConfig(image_size=384, patch_size=16, hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden_size // 64), intermediate_size=4 * hidden_size)
    torch.manual_seed(0)
    DeiTForImageClassificationWithTeacher(config).save_pretrained(directory)
    return directory


def plain_command(data: Path, deit: Path, output: Path, learning_rate: float, epochs: int, batch_size: int,
                  seed: int = 0, extra=()) -> dict:
    """Run the training script as a new user would; return its final metrics and wall time."""
    command = [
        sys.executable, str(ROOT / "examples" / "run_audioset.py"), "--dataset_name", str(data),
        "--model_name_or_path", str(deit), "--output_dir", str(output), "--learning_rate", str(learning_rate),
        "--num_train_epochs", str(epochs), "--per_device_train_batch_size", str(batch_size), "--seed", str(seed),
        "--checkpointing_steps", "none", *extra,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the plain command failed:\n{' '.join(command)}\n{done.stderr[-4000:]}")
    results = json.loads((output / "all_results.json").read_text())
    return {**results["final"], "seconds": time.perf_counter() - start}


def _audiofolder(data: Path):
    """(train, test) decoded at 16 kHz, the label column, whether it is multi-label, and the label names."""
    import datasets

    raw = datasets.load_dataset("audiofolder", data_dir=str(data))
    raw = raw.cast_column("audio", datasets.Audio(sampling_rate=16000))
    column = "labels" if "labels" in raw["train"].column_names else "label"
    feature = raw["train"].features[column]
    multi_label = isinstance(feature, (datasets.List, datasets.Sequence, list))
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        return raw["train"], raw["test"], column, multi_label, names
    values = raw["train"][column]
    names = sorted({label for labels in values for label in labels} if multi_label else set(values))
    if not multi_label:  # label strings -> class ids, as the targets below expect
        raw = raw.map(lambda row: {column: names.index(row[column])}, remove_columns=[], desc="label ids")
    return raw["train"], raw["test"], column, multi_label, names


def plain_loop(data: Path, deit: Path, learning_rate: float, epochs: int, batch_size: int, seed: int = 0,
               warmup_fraction: float = 0.05, weight_decay: float = 0.01) -> dict:
    """A plain loop around transformers' AST: features once, AdamW, warm-up + cosine, no augmentation."""
    from safetensors.torch import save_file
    from sklearn.metrics import average_precision_score
    from transformers import ASTFeatureExtractor, ASTForAudioClassification, get_cosine_schedule_with_warmup

    from hf_ast import HfAstForAudioClassification
    from hf_ast.conversion import hf_ast_config_to_transformers

    start = time.perf_counter()
    torch.manual_seed(seed)
    train, test, column, multi_label, names = _audiofolder(data)
    label2id = {name: index for index, name in enumerate(names)}

    def features_and_targets(split):
        arrays = [row["array"] for row in split["audio"]]
        frames = max(1 + (len(array) - 400) // 160 for array in arrays)
        if multi_label:
            targets = torch.zeros(len(split), len(names))
            for row, labels in enumerate(split[column]):
                targets[row, [label2id[label] for label in labels]] = 1
        else:
            targets = torch.tensor(split[column])
        return arrays, frames, targets

    train_arrays, frames, train_targets = features_and_targets(train)
    test_arrays, _, test_targets = features_and_targets(test)
    extractor = ASTFeatureExtractor(max_length=frames)  # AudioSet mean/std, padded to the longest training clip
    train_x = torch.from_numpy(np.stack(extractor(train_arrays, sampling_rate=16000)["input_values"]))
    test_x = torch.from_numpy(np.stack(extractor(test_arrays, sampling_rate=16000)["input_values"]))

    problem_type = "multi_label_classification" if multi_label else "single_label_classification"
    initial = HfAstForAudioClassification.from_deit(
        str(deit), channel_reduction="mean", max_length=frames, id2label=dict(enumerate(names)),
        label2id=label2id, problem_type=problem_type)
    with tempfile.TemporaryDirectory() as directory:  # the same initial weights, in transformers' format
        hf_ast_config_to_transformers(initial.config).save_pretrained(directory)
        save_file({name: tensor.contiguous() for name, tensor in initial.state_dict().items()},
                  str(Path(directory) / "model.safetensors"), metadata={"format": "pt"})
        model = ASTForAudioClassification.from_pretrained(directory)
    model.config.problem_type = problem_type

    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(train_x) / batch_size)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup_fraction * steps), steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(train_x), generator=generator).split(batch_size):
            logits = model(input_values=train_x[batch]).logits
            if multi_label:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, train_targets[batch])
            else:
                loss = torch.nn.functional.cross_entropy(logits, train_targets[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(input_values=chunk).logits for chunk in test_x.split(64)])
    if multi_label:
        scored = test_targets.sum(0) > 0
        result = {"mAP": float(average_precision_score(test_targets[:, scored], logits.sigmoid()[:, scored],
                                                       average="macro"))}
    else:
        result = {"accuracy": float((logits.argmax(-1) == test_targets).float().mean())}
    return {**result, "seconds": time.perf_counter() - start}


def compare_shape(shape, data, deit, work, learning_rate, epochs, batch_size, seeds=(0,)):
    """Both runs on one shape, once per training seed (same data): means, per-seed figures and seconds.

    One seed is not evidence: on a few hundred held-out clips two seeds of the same run differ by
    several points, so the difference is taken between the means over `seeds`.
    """
    ours, theirs = [], []
    for seed in seeds:
        output = work / f"{shape}-hf-ast-{seed}"
        ours.append(plain_command(data, deit, output, learning_rate, epochs, batch_size, seed))
        theirs.append(plain_loop(data, deit, learning_rate, epochs, batch_size, seed))
    metric = "mAP" if "mAP" in theirs[0] else "accuracy"
    hf_ast, plain = [run[metric] for run in ours], [run[metric] for run in theirs]
    return {"shape": shape, "metric": metric, "seeds": list(seeds), "hf_ast_runs": hf_ast, "plain_loop_runs": plain,
            "hf_ast": float(np.mean(hf_ast)), "plain_loop": float(np.mean(plain)),
            "difference": float(np.mean(hf_ast) - np.mean(plain)),
            "hf_ast_seconds": float(np.mean([run["seconds"] for run in ours])),
            "plain_loop_seconds": float(np.mean([run["seconds"] for run in theirs]))}


def epoch_seconds(output: Path) -> float:
    """Mean wall time of one epoch of a finished run (training and evaluation), from its epoch files' times."""
    times = sorted(path.stat().st_mtime for path in output.glob("epoch_*_results.json"))
    if len(times) < 2:
        raise ValueError(f"{output} has {len(times)} epoch result files; timing an epoch needs at least 2")
    return (times[-1] - times[0]) / (len(times) - 1)


def patchout_values(output: Path, time_fraction: float = 0.4, frequency_fraction: float = 1 / 3) -> tuple[int, int]:
    """PaSST's AudioSet proportions (40 of 101 time columns, 4 of 12 frequency rows) on the grid a run trained."""
    from hf_ast import HfAstConfig

    f, t = HfAstConfig.from_pretrained(output).patch_grid
    return max(1, round(time_fraction * t)), max(1, round(frequency_fraction * f))


def compare_patchout(shape, data, deit, work, learning_rate, epochs, batch_size, seeds=(0,)):
    """The plain command with and without patchout on one shape: at the same epochs and at the same wall time.

    Patchout makes an epoch cheaper, so in the wall time of the run without it (`T`) a run with it
    does more epochs: `equal_epochs = floor(epochs + (T - T_patchout) / patchout epoch)`, from the
    first seed's two runs of `epochs` epochs (`T_patchout` is the patchout run's wall time, so its
    start-up and saving are counted; an epoch's time includes its evaluation, which patchout does not
    shorten). Each run's own wall time is reported beside its figure.
    """
    base, same, equal = [], [], []
    flags, equal_epochs, epoch_times = None, None, None
    for seed in seeds:
        base_output = work / f"{shape}-base-{seed}"
        base.append(plain_command(data, deit, base_output, learning_rate, epochs, batch_size, seed))
        if flags is None:
            time_columns, frequency_rows = patchout_values(base_output)
            flags = ("--patchout_time", str(time_columns), "--patchout_freq", str(frequency_rows))
        output = work / f"{shape}-patchout-{seed}"
        same.append(plain_command(data, deit, output, learning_rate, epochs, batch_size, seed, flags))
        if equal_epochs is None:  # from the first seed's two runs
            epoch_times = {"base": epoch_seconds(base_output), "patchout": epoch_seconds(output)}
            spare = base[0]["seconds"] - same[0]["seconds"]  # what the patchout run saved at the same epochs
            equal_epochs = max(epochs, math.floor(epochs + spare / epoch_times["patchout"]))
        output = work / f"{shape}-patchout-equal-time-{seed}"
        equal.append(plain_command(data, deit, output, learning_rate, equal_epochs, batch_size, seed, flags))
    metric = "mAP" if "mAP" in base[0] else "accuracy"

    def summary(runs):
        return {"runs": [run[metric] for run in runs], "mean": float(np.mean([run[metric] for run in runs])),
                "seconds": float(np.mean([run["seconds"] for run in runs]))}

    base, same, equal = summary(base), summary(same), summary(equal)
    return {"shape": shape, "metric": metric, "seeds": list(seeds), "patchout_flags": list(flags),
            "epochs": epochs, "equal_time_epochs": equal_epochs, "epoch_seconds": epoch_times,
            "base": base, "patchout_same_epochs": same, "patchout_equal_time": equal,
            "difference_equal_time": equal["mean"] - base["mean"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of " + ", ".join(SHAPES))
    parser.add_argument("--num-train", type=int, default=1500)
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2.5e-4)
    parser.add_argument("--seeds", default="0,1,2", help="training seeds; each row compares the means over them")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--quick", action="store_true", help="400 training clips, 4 epochs, one seed")
    parser.add_argument("--patchout", action="store_true",
                        help="compare the plain command with and without patchout (PaSST's proportions) at the same "
                             "epochs and at the same wall time, instead of against the plain loop")
    parser.add_argument("--work-dir", default=None, help="keep data and models here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_train, args.num_test, args.epochs, args.seeds = 400, 200, 4, "0"
    seeds = [int(seed) for seed in args.seeds.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).parent))
    from common import machine_info

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_recipes-"))
    work.mkdir(parents=True, exist_ok=True)
    deit = build_deit(work / "deit")
    rows = []
    print(f"# bench_recipes: {json.dumps(machine_info(torch.device('cpu')))}")
    print(f"# {args.num_train} training / {args.num_test} held-out clips, {args.epochs} epochs, "
          f"batch {args.batch_size}, lr {args.learning_rate}, training seeds {seeds} (figures are means over them), "
          f"data seed {args.data_seed}")
    if args.patchout:
        return main_patchout(args, work, deit, seeds)
    print(f"{'shape':<10} {'metric':<9} {'hf-ast':>7} {'loop':>7} {'diff':>7} {'hf-ast s':>9} {'loop s':>7}")
    for shape in args.shapes.split(","):
        data = make_shape(shape, work / "data", args.num_train, args.num_test, args.data_seed)
        row = compare_shape(shape, data, deit, work, args.learning_rate, args.epochs, args.batch_size, seeds)
        rows.append(row)
        runs = " ".join(f"{ours:.3f}/{theirs:.3f}" for ours, theirs in zip(row["hf_ast_runs"], row["plain_loop_runs"]))
        print(f"{shape:<10} {row['metric']:<9} {row['hf_ast']:>7.3f} {row['plain_loop']:>7.3f} "
              f"{row['difference']:>+7.3f} {row['hf_ast_seconds']:>9.0f} {row['plain_loop_seconds']:>7.0f}  "
              f"per seed {runs}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return rows


def main_patchout(args, work, deit, seeds):
    """`--patchout`: one row per shape, the plain command without patchout against it with patchout."""
    rows = []
    print(f"{'shape':<10} {'metric':<9} {'patchout':<12} {'base':>13} {'same epochs':>13} {'equal time':>17} "
          f"{'diff':>7}  (figure, mean wall seconds)")
    for shape in args.shapes.split(","):
        data = make_shape(shape, work / "data", args.num_train, args.num_test, args.data_seed)
        row = compare_patchout(shape, data, deit, work, args.learning_rate, args.epochs, args.batch_size, seeds)
        rows.append(row)
        flags = f"{row['patchout_flags'][1]}/{row['patchout_flags'][3]}"
        base, same, equal = row["base"], row["patchout_same_epochs"], row["patchout_equal_time"]
        print(f"{shape:<10} {row['metric']:<9} {flags:<12} {base['mean']:>7.3f} {base['seconds']:>4.0f} s "
              f"{same['mean']:>7.3f} {same['seconds']:>4.0f} s {equal['mean']:>7.3f} {equal['seconds']:>4.0f} s "
              f"({row['equal_time_epochs']:>2} ep) {row['difference_equal_time']:>+7.3f}  "
              f"per seed base {' '.join(f'{v:.3f}' for v in base['runs'])}, "
              f"equal time {' '.join(f'{v:.3f}' for v in equal['runs'])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
