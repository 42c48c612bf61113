"""Training throughput (target 7): one step of the training loop, hf-ast against transformers.

Same data (a batch of generated 2 s sound-event clips, `hf_ast.training.synthetic`), same model shape (the
offline demo's: width 192, 4 layers, 3 heads, stride 16, 198 frames, 8 labels, BCE) and the same
initial weights. One step is everything from raw audio to updated weights:

  hf-ast         `hf_ast.training.AudioCollator` (decodes, featurises the batch at once, frame
                 mask) -> `HfAstForAudioClassification` (sdpa) -> backward -> AdamW step
  transformers   `ASTFeatureExtractor` (clip by clip) -> `ASTForAudioClassification` (sdpa)
                 -> backward -> AdamW step

    python benchmarks/bench_training.py [--quick] [--batch-size 32]
"""

import numpy as np
import torch

from common import Report, ast_forward_flops, base_parser, compare, setup, twin_models


def main(argv=None):
    parser = base_parser(__doc__)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    device = setup(args)
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


if __name__ == "__main__":
    main()
