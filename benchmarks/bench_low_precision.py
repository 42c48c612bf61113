"""Low-precision inference (target 2): speed against transformers fp32, and what it costs in accuracy.

Speed rows (base geometry, batch 1, random weights shared with transformers): hf-ast with
`optimize_for_inference(model, "bf16")` and `"int8"` (torchao, compiled) against transformers'
`ASTForAudioClassification` in fp32 with sdpa. Compilation happens in the warm-up, outside the
timed repetitions; its wall time is reported.

Accuracy rows: a small AST trained here for a minute on the package's synthetic sound events
(`hf_ast.training.synthetic`, 8 classes, multi-label; or the offline demo's model with `--model DIR`),
evaluated on the held-out split in fp32, bf16 and int8: top-1 agreement with fp32, mAP and its
drop, and the largest logit drift.

    python benchmarks/bench_low_precision.py [--quick] [--model demo_output/ast-sound-events]
"""

import copy
import time
from pathlib import Path

import numpy as np
import torch

from common import Report, ast_forward_flops, base_config, base_parser, compare, setup, twin_models

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# A small trained model and its held-out split
# ---------------------------------------------------------------------------------------------


def synthetic_features(num_clips: int, split: str, seed: int, extractor, duration_s: float = 2.0):
    """`(N, frames, 128)` features and `(N, 8)` multi-hot targets of the generated sound events."""
    from hf_ast.training.synthetic import SOUND_EVENT_CLASSES, SPLITS, synthesize_clip

    rng = np.random.default_rng([seed, SPLITS.index(split)])  # the generator's own per-split stream
    clips, targets = [], np.zeros((num_clips, len(SOUND_EVENT_CLASSES)), dtype=np.float32)
    for index in range(num_clips):
        audio, labels = synthesize_clip(rng, split, duration_s=duration_s)
        clips.append(audio)
        targets[index, [SOUND_EVENT_CLASSES.index(label) for label in labels]] = 1
    features = torch.cat([
        extractor(clips[i : i + 64], sampling_rate=16000, return_tensors="pt")["input_values"]
        for i in range(0, num_clips, 64)
    ])
    return features, torch.from_numpy(targets)


def train_small_model(quick: bool, seed: int = 0):
    """An AST of width 192, 4 layers, stride 16, trained on 2 s clips: a few minutes of CPU at most."""
    from hf_ast import HfAstConfig, HfAstFeatureExtractor, HfAstForAudioClassification
    from hf_ast.training.synthetic import SOUND_EVENT_CLASSES

    frames = 198  # 2 s
    extractor = HfAstFeatureExtractor(max_length=frames)
    num_train, num_test, epochs = (600, 300, 3) if quick else (1000, 400, 4)
    train_x, train_y = synthetic_features(num_train, "train", seed, extractor)
    test_x, test_y = synthetic_features(num_test, "test", seed, extractor)
    config = HfAstConfig(
        hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768, max_length=frames,
        frequency_stride=16, time_stride=16, num_labels=len(SOUND_EVENT_CLASSES),
        id2label=dict(enumerate(SOUND_EVENT_CLASSES)), problem_type="multi_label_classification",
    )
    torch.manual_seed(seed)
    model = HfAstForAudioClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    steps = epochs * (num_train // 32)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-4, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(num_train, generator=generator)
        for start in range(0, num_train - 31, 32):
            rows = order[start : start + 32]
            loss = model(train_x[rows], labels=train_y[rows]).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    return model.eval(), test_x, test_y


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    present = targets.sum(axis=0) > 0
    return float(average_precision_score(targets[:, present], scores[:, present], average="macro"))


@torch.inference_mode()
def predict(model, features: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    return torch.cat([model(features[i : i + batch_size]).logits.float() for i in range(0, len(features), batch_size)])


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    parser = base_parser(__doc__)
    parser.add_argument("--model", default=None, help="a trained hf-ast directory (default: train one here)")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args(argv)
    device = setup(args)
    repeats = args.repeats or (3 if args.quick else 5)

    from hf_ast import HfAstFeatureExtractor, HfAstForAudioClassification, optimize_for_inference

    report = Report("bench_low_precision", args, device)

    # -- speed at the base geometry ---------------------------------------------------------------
    if not args.skip_speed:
        report.measure_peaks(quick=args.quick)
        config = base_config()
        fp32, theirs = twin_models(config)
        fp32, theirs = fp32.to(device), theirs.to(device)
        x = (torch.randn(1, config.max_length, config.num_mel_bins, generator=torch.Generator().manual_seed(0))
             * 0.5).to(device)
        candidates, drift, compile_s = {"transformers fp32": lambda: theirs(x)}, {}, {}
        with torch.inference_mode():
            reference = fp32(x).logits.float()
        # int8 compiled only in the full run: its first call compiles for about a minute on 2 cores.
        variants = [("bf16", False), ("int8", False)] + ([] if args.quick else [("int8", True)])
        names = []
        for precision, compiled in variants:
            name = f"{precision}{' compiled' if compiled else ''}"
            model = optimize_for_inference(copy.deepcopy(fp32), precision, compile=compiled)
            began = time.perf_counter()
            with torch.inference_mode():
                drift[name] = (model(x).logits.float() - reference).abs().max().item()
            compile_s[name] = time.perf_counter() - began
            candidates[f"hf-ast {name}"] = (lambda m: lambda: m(x))(model)
            names.append(name)
        del fp32
        with torch.inference_mode():
            timings = compare(candidates, repeats=repeats, warmup=args.warmup, device=device,
                              min_uncontended=min(3, repeats), max_extra=repeats)
        flops = ast_forward_flops(config, 1)
        baseline = timings["transformers fp32"]
        report.add("speed batch 1", "transformers fp32 sdpa", baseline, flops)
        for name in names:
            report.add("speed batch 1", f"hf-ast {name}", timings[f"hf-ast {name}"], flops, baseline=baseline,
                       logit_drift=drift[name], first_call_s=compile_s[name])

    # -- accuracy on a trained model --------------------------------------------------------------
    began = time.perf_counter()
    if args.model:
        model = HfAstForAudioClassification.from_pretrained(args.model).eval()
        extractor = HfAstFeatureExtractor.from_pretrained(args.model)
        test_x, test_y = synthetic_features(300 if args.quick else 500, "test", 0, extractor)
        source = args.model
    else:
        model, test_x, test_y = train_small_model(args.quick)
        source = "trained here (width 192, 4 layers, stride 16, 2 s synthetic clips)"
    report.note(f"accuracy model: {source}; {len(test_x)} held-out clips; "
                f"prepared in {time.perf_counter() - began:.0f} s")
    model, test_x = model.to(device), test_x.to(device)
    logits = {"fp32": predict(model, test_x)}
    for precision in ("bf16", "int8"):
        logits[precision] = predict(optimize_for_inference(copy.deepcopy(model), precision), test_x)
    targets = test_y.numpy()
    map_fp32 = mean_average_precision(torch.sigmoid(logits["fp32"]).cpu().numpy(), targets)
    for precision in ("bf16", "int8"):
        agreement = (logits[precision].argmax(-1) == logits["fp32"].argmax(-1)).float().mean().item()
        map_low = mean_average_precision(torch.sigmoid(logits[precision]).cpu().numpy(), targets)
        row = {
            "group": "accuracy", "name": f"hf-ast {precision} vs fp32",
            "median_s": float("nan"), "min_s": float("nan"),
            "uncontended": 0, "repeats": 0, "cpu_per_wall": [], "contended": False,
            "top1_agreement": agreement, "map_fp32": map_fp32, "map": map_low, "map_drop": map_fp32 - map_low,
            "logit_drift": (logits[precision] - logits["fp32"]).abs().max().item(),
        }
        report.rows.append(row)
        print(f"accuracy {precision}: top-1 agreement {agreement:.4f}, mAP {map_low:.4f} (fp32 {map_fp32:.4f}, "
              f"drop {map_fp32 - map_low:+.4f}), max logit drift {row['logit_drift']:.4f}", flush=True)

    report.print_table()
    report.write(args.json)


if __name__ == "__main__":
    main()
