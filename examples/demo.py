"""hf-ast's offline main job: train an AST for real on a generated sound-event set, then classify.

No network is needed: the data come from the package's generator (`hf_ast.training.synthetic`: eight
classes of synthesised sources, 1-3 per clip, the held-out split drawn from parameter ranges not
used in training) and the image backbone is a small DeiT-shaped checkpoint built here with
random weights (ImageNet weights cannot be downloaded offline). The job then runs

    accelerate launch examples/run_audioset.py --dataset_name <the generated audiofolder> ...

evaluates on the held-out split, saves the model, and classifies a held-out clip with
`pipeline()`. With network access, pass an ImageNet checkpoint instead:

    python examples/demo.py --deit facebook/deit-base-distilled-patch16-384
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, pipeline

import hf_ast  # noqa: F401  (registers the Auto classes)
from hf_ast.training.synthetic import write_sound_events_audiofolder

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deit", default=None, help="DeiT/ViT Hub id, local dir or timm file (default: build one)")
    parser.add_argument("--output_dir", default="demo_output", help="data, backbone, model and plots go here")
    parser.add_argument("--num_train", type=int, default=6000, help="generated training clips")
    parser.add_argument("--num_test", type=int, default=500, help="generated held-out clips")
    parser.add_argument("--duration", type=float, default=2.0, help="clip length in seconds")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--hidden_size", type=int, default=192, help="width of the locally built DeiT")
    parser.add_argument("--layers", type=int, default=4, help="depth of the locally built DeiT")
    parser.add_argument("--stride", type=int, default=16, help="patch stride on both axes (the paper: 10)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build_local_deit(directory: Path, hidden_size: int, layers: int) -> Path:
    """A distilled DeiT at 384 px / 16 px patches (24x24 position grid), random weights, saved as transformers does."""
    config = DeiTConfig(image_size=384, patch_size=16, hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden_size // 64), intermediate_size=4 * hidden_size)
    torch.manual_seed(0)
    DeiTForImageClassificationWithTeacher(config).save_pretrained(directory)
    return directory


def main(argv=None):
    args = parse_args(argv)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    # 1. Data: an audiofolder with train/ and test/ splits and AudioSet's label-file format.
    data = output / "sound_events"
    if data.exists():
        shutil.rmtree(data)
    write_sound_events_audiofolder(data, num_train=args.num_train, num_test=args.num_test, seed=args.seed,
                                   duration_s=args.duration)
    print(f"[1/4] generated {args.num_train} training and {args.num_test} held-out clips in {data}")

    # 2. The image backbone.
    backbone = args.deit or str(build_local_deit(output / "deit-local", args.hidden_size, args.layers))
    print(f"[2/4] image backbone: {backbone}")

    # 3. Training with Accelerate (one process here; the same script runs on GPUs and clusters).
    model_dir = output / "ast-sound-events"
    # One process gets every core: without --num_cpu_threads_per_process (or --cpu), `accelerate launch`
    # sets OMP_NUM_THREADS=1, which halves training speed on this 2-core machine.
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--num_cpu_threads_per_process", str(threads),
        "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "run_audioset.py"),
        "--dataset_name", str(data), "--label_list", str(data / "class_labels_indices.csv"),
        "--model_name_or_path", backbone, "--output_dir", str(model_dir),
        # The plain command: the `auto` recipe derives the loss (BCE: the clips carry label lists), the input
        # length (the clips'), the warm-up and cosine decay from the data and the run (README, Training).
        # Only the run's size is set here, and a coarser patch stride (16) that makes it 2.5x cheaper.
        "--fstride", str(args.stride), "--tstride", str(args.stride),
        "--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--checkpointing_steps", "epoch", "--seed", str(args.seed),
    ]
    print("[3/4] " + " ".join(command[3:]))
    subprocess.run(command, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    results = json.loads((model_dir / "all_results.json").read_text())["final"]
    print(f"      held-out mAP {results['mAP']:.3f}, mAUC {results['mAUC']:.3f}, d' {results['d_prime']:.2f} "
          f"(curves: {model_dir / 'training_curves.png'})")

    # 4. A held-out clip through the stock pipeline.
    metadata = [json.loads(line) for line in (data / "test" / "metadata.jsonl").read_text().splitlines()]
    clip = metadata[0]
    classifier = pipeline("audio-classification", model=str(model_dir))
    scores = classifier(str(data / "test" / clip["file_name"]), top_k=None)
    print(f"[4/4] {clip['file_name']} contains {', '.join(sorted(clip['labels']))}; the model hears:")
    for result in scores:
        mark = "*" if result["label"] in clip["labels"] else " "
        print(f"    {mark} {result['label']:<12} {result['score']:.3f} {'#' * round(result['score'] * 40)}")
    print(f"done in {time.perf_counter() - start:.0f} s; held-out mAP {results['mAP']:.3f}")
    return results


if __name__ == "__main__":
    main()
