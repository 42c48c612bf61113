"""Training throughput (target 7): one step of the training loop, hf-ast against transformers.

Same data (a batch of generated 2 s sound-event clips, `hf_ast.training.synthetic`), same model shape (the
offline demo's: width 192, 4 layers, 3 heads, stride 16, 198 frames, 8 labels, BCE) and the same
initial weights. One step is everything from raw audio to updated weights:

  hf-ast         `hf_ast.training.AudioCollator` (decodes, featurises the batch at once, frame
                 mask) -> `HfAstForAudioClassification` (sdpa) -> backward -> AdamW step
  transformers   `ASTFeatureExtractor` (clip by clip) -> `ASTForAudioClassification` (sdpa)
                 -> backward -> AdamW step

    python benchmarks/bench_training.py [--quick] [--batch-size 32]

`--patchout` runs instead one step at the paper's AudioSet geometry (1024 frames, stride 10, base
size, 527 labels, BCE), on one batch of normalised features: hf-ast with PaSST's structured patchout
(40 of 101 time columns and 4 of 12 frequency rows dropped: 490 of 1214 tokens left), the same
step without patchout, and transformers' AST step; with the memory each step adds (VmHWM).

    python benchmarks/bench_training.py --patchout --batch-size 2 --repeats 2 [--threads 1 --cpu-time]
"""

import ctypes
import re

import numpy as np
import torch

from common import Report, ast_forward_flops, base_config, base_parser, compare, setup, twin_models


def main(argv=None):
    parser = base_parser(__doc__)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patchout", action="store_true",
                        help="the AudioSet-geometry step with and without PaSST's patchout (40/4), and transformers'")
    args = parser.parse_args(argv)
    device = setup(args)
    if args.patchout:
        return patchout_main(args, device)
    repeats = args.repeats or (3 if args.quick else 6)

    from transformers import ASTFeatureExtractor

    from hf_ast import HfAstConfig, HfAstFeatureExtractor
    from hf_ast.training import AudioCollator
    from hf_ast.training.synthetic import SOUND_EVENT_CLASSES, synthesize_clip

    report = Report("bench_training", args, device)
    report.measure_peaks(quick=args.quick)
    frames = 198
    config = HfAstConfig(
        hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768, max_length=frames,
        frequency_stride=16, time_stride=16, num_labels=len(SOUND_EVENT_CLASSES),
        problem_type="multi_label_classification",
    )
    ours, theirs = twin_models(config)
    theirs.config.problem_type = "multi_label_classification"
    ours, theirs = ours.to(device).train(), theirs.to(device).train()

    rng = np.random.default_rng([0, 0])
    clips, targets = [], torch.zeros(args.batch_size, len(SOUND_EVENT_CLASSES))
    for index in range(args.batch_size):
        audio, labels = synthesize_clip(rng, "train", duration_s=2.0)
        clips.append(audio)
        targets[index, [SOUND_EVENT_CLASSES.index(label) for label in labels]] = 1
    rows = [{"audio": {"array": clip, "sampling_rate": 16000}, "_index": i} for i, clip in enumerate(clips)]

    collator = AudioCollator(HfAstFeatureExtractor(max_length=frames), "audio", targets, train=True)
    their_extractor = ASTFeatureExtractor(max_length=frames)
    our_optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    their_optimizer = torch.optim.AdamW(theirs.parameters(), lr=1e-5)

    def our_step():
        batch = collator(rows)
        loss = ours(input_values=batch["input_values"].to(device), attention_mask=batch["attention_mask"].to(device),
                    labels=batch["labels"].to(device)).loss
        loss.backward()
        our_optimizer.step()
        our_optimizer.zero_grad(set_to_none=True)

    def their_step():
        features = their_extractor(clips, sampling_rate=16000, return_tensors="pt")["input_values"]
        loss = theirs(input_values=features.to(device), labels=targets.to(device)).loss
        loss.backward()
        their_optimizer.step()
        their_optimizer.zero_grad(set_to_none=True)

    with torch.no_grad():  # same features and logits before any step
        ours.eval(), theirs.eval()
        batch = collator(rows)
        features = their_extractor(clips, sampling_rate=16000, return_tensors="pt")["input_values"]
        feature_diff = (batch["input_values"] - features).abs().max().item()
        logits = ours(batch["input_values"].to(device)).logits
        logit_diff = (logits - theirs(features.to(device)).logits).abs().max().item()
        ours.train(), theirs.train()
    timings = compare({"transformers": their_step, "hf-ast": our_step}, repeats=repeats, warmup=args.warmup,
                      device=device, min_uncontended=min(3, repeats), max_extra=repeats)
    flops = 3 * ast_forward_flops(config, args.batch_size)  # forward + backward ~ 3 forwards
    group = f"train step batch {args.batch_size}"
    report.add(group, "transformers extractor + AST", timings["transformers"], flops)
    report.add(group, "hf-ast AudioCollator + model", timings["hf-ast"], flops, baseline=timings["transformers"],
               feature_diff=feature_diff, max_abs_diff=logit_diff)
    report.note("training FLOPs are counted as 3 forwards (forward + backward), feature extraction and the optimiser "
                "excluded")
    report.print_table()
    report.write(args.json)


# PaSST's AudioSet setting (Koutini et al. 2021): 40 time columns and 4 frequency rows dropped.
PASST_TIME, PASST_FREQ = 40, 4


def step_peak_mib(step) -> float:
    """MiB the process's resident memory rose above its level before `step()` at the step's peak (Linux VmHWM).

    glibc's mmap threshold is fixed first (`fix_mmap_threshold`), so large freed tensors go back to the
    system and each step's peak is its own, not an earlier step's reused heap.
    """
    def status(field):
        return int(re.search(rf"{field}:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) / 1024

    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current RSS
    before = status("VmRSS")
    step()
    return status("VmHWM") - before


def fix_mmap_threshold(size: int = 128 * 1024):
    """glibc raises its mmap threshold after large frees, keeping later large blocks on the heap; fix it."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, size)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def patchout_main(args, device):
    from hf_ast import patch_grid

    fix_mmap_threshold()
    repeats = args.repeats or (2 if args.quick else 3)
    report = Report("bench_training_patchout", args, device)
    config = base_config(problem_type="multi_label_classification")
    ours, theirs = twin_models(config)
    theirs.config.problem_type = "multi_label_classification"
    ours, theirs = ours.to(device).train(), theirs.to(device).train()
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(args.batch_size, config.max_length, config.num_mel_bins, generator=generator) * 0.5
    targets = (torch.rand(args.batch_size, config.num_labels, generator=generator) < 0.01).float()
    features, targets = features.to(device), targets.to(device)
    our_optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    their_optimizer = torch.optim.AdamW(theirs.parameters(), lr=1e-5)

    def our_step(time_columns, frequency_rows):
        def step():
            ours.config.patchout_time, ours.config.patchout_freq = time_columns, frequency_rows
            loss = ours(input_values=features, labels=targets).loss
            loss.backward()
            our_optimizer.step()
            our_optimizer.zero_grad(set_to_none=True)
        return step

    def their_step():
        loss = theirs(input_values=features, labels=targets).loss
        loss.backward()
        their_optimizer.step()
        their_optimizer.zero_grad(set_to_none=True)

    candidates = {"transformers": their_step, "hf-ast": our_step(0, 0),
                  "hf-ast patchout": our_step(PASST_TIME, PASST_FREQ)}
    timings = compare(candidates, repeats=repeats, warmup=args.warmup, device=device,
                      min_uncontended=min(2, repeats), max_extra=0)
    peaks = {name: step_peak_mib(step) for name, step in candidates.items()} if device.type == "cpu" else {}
    f, t = patch_grid(config.num_mel_bins, config.max_length, config.patch_size, config.frequency_stride,
                      config.time_stride)
    kept_tokens = 2 + (f - PASST_FREQ) * (t - PASST_TIME)
    full = 3 * ast_forward_flops(config, args.batch_size)
    group = f"AudioSet step batch {args.batch_size}"
    extra = {name: {"step_peak_mib": round(peaks[name])} if name in peaks else {} for name in candidates}
    report.add(group, "transformers AST", timings["transformers"], full, **extra["transformers"])
    report.add(group, "hf-ast", timings["hf-ast"], full, baseline=timings["transformers"], **extra["hf-ast"])
    report.add(group, f"hf-ast patchout {PASST_TIME}/{PASST_FREQ}", timings["hf-ast patchout"],
               3 * ast_forward_flops(config, args.batch_size, num_tokens=kept_tokens),
               baseline=timings["transformers"], vs_hf_ast=round(timings["hf-ast"].median /
                                                                 timings["hf-ast patchout"].median, 2),
               tokens=f"{kept_tokens}/{2 + f * t}", **extra["hf-ast patchout"])
    report.note(f"patchout drops {PASST_TIME} of {t} time columns and {PASST_FREQ} of {f} frequency rows (PaSST's "
                f"AudioSet setting): {kept_tokens} of {2 + f * t} tokens; GFLOP/s counts the FLOPs each step does")
    report.note("step_peak_mib: resident memory the step adds at its peak over the loaded models and optimizer "
                "state (Linux VmHWM, glibc mmap threshold fixed)")
    report.print_table()
    report.write(args.json)


if __name__ == "__main__":
    main()
