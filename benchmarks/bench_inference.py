"""Inference speed: hf-ast against transformers' `ASTForAudioClassification`, same weights (targets 1 and 3).

Rows (paper geometry, 128 x 1024 input = 1214 tokens, random weights shared by both models):
  fp32 batch 1 and 4     hf-ast (sdpa) vs transformers (sdpa); logits max abs difference
  1 s clip               hf-ast without padding (110 tokens) vs transformers on the clip padded to
                         1024 frames, which is what transformers must do
  mixed-length batch     hf-ast on a padded batch of clips of different lengths with the
                         extractor's attention mask, against the sum of each clip run alone
                         (a ratio near 1.0 means the padding costs nothing)

    python benchmarks/bench_inference.py [--quick] [--device cuda] [--repeats N]
"""

import torch

from common import Report, ast_forward_flops, base_config, base_parser, compare, setup, twin_models


def main(argv=None):
    parser = base_parser(__doc__)
    parser.add_argument("--batch-sizes", default="1,4", help="comma-separated batch sizes of the fp32 rows")
    parser.add_argument("--eager", action="store_true", help="also time transformers with eager attention")
    args = parser.parse_args(argv)
    device = setup(args)
    repeats = args.repeats or (2 if args.quick else 5)
    report = Report("bench_inference", args, device)
    report.measure_peaks(quick=args.quick)

    config = base_config()
    ours, theirs = twin_models(config)
    ours, theirs = ours.to(device), theirs.to(device)
    generator = torch.Generator().manual_seed(0)

    # -- 1. fp32, full 10 s clips -----------------------------------------------------------------
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        x = (torch.randn(batch_size, config.max_length, config.num_mel_bins, generator=generator) * 0.5).to(device)
        with torch.inference_mode():
            diff = (ours(x).logits - theirs(x).logits).abs().max().item()
            timings = compare({"transformers": lambda: theirs(x), "hf-ast": lambda: ours(x)},
                              repeats=repeats, warmup=args.warmup, device=device,
                              min_uncontended=min(3, repeats), max_extra=repeats)
        flops = ast_forward_flops(config, batch_size)
        group = f"fp32 batch {batch_size}"
        report.add(group, "transformers sdpa", timings["transformers"], flops)
        report.add(group, "hf-ast sdpa", timings["hf-ast"], flops, baseline=timings["transformers"], max_abs_diff=diff)
        if args.eager:
            theirs.set_attn_implementation("eager")
            with torch.inference_mode():
                eager = compare({"transformers eager": lambda: theirs(x)}, repeats=repeats, warmup=args.warmup,
                                device=device)["transformers eager"]
            theirs.set_attn_implementation("sdpa")
            report.add(group, "transformers eager", eager, flops, baseline=timings["transformers"])

    # -- 3a. a 1 s clip: padding-free against padded to 1024 frames --------------------------------
    from hf_ast import HfAstFeatureExtractor

    extractor = HfAstFeatureExtractor()
    clip = (torch.randn(16000, generator=generator) * 0.1).numpy()
    short = extractor(clip, sampling_rate=16000, padding="longest", return_tensors="pt")["input_values"].to(device)
    padded = extractor(clip, sampling_rate=16000, return_tensors="pt")["input_values"].to(device)  # 1024 frames
    with torch.inference_mode():
        timings = compare({"transformers padded": lambda: theirs(padded), "hf-ast padding-free": lambda: ours(short)},
                          repeats=repeats * 2, warmup=args.warmup, device=device,
                          min_uncontended=min(3, repeats), max_extra=repeats)
    group = "1 s clip"
    report.add(group, "transformers, padded to 1024", timings["transformers padded"], ast_forward_flops(config, 1))
    report.add(group, f"hf-ast, {short.shape[1]} frames", timings["hf-ast padding-free"],
               ast_forward_flops(config, 1, num_frames=short.shape[1]), baseline=timings["transformers padded"])

    # -- 3b. mixed lengths in one masked batch against each clip alone ----------------------------
    seconds = [1.0, 2.5, 5.0, 10.0]
    clips = [(torch.randn(int(s * 16000), generator=generator) * 0.1).numpy() for s in seconds]
    batch = extractor(clips, sampling_rate=16000, padding="longest", return_attention_mask=True, return_tensors="pt")
    batch = {k: v.to(device) for k, v in batch.items()}
    alone = [extractor(c, sampling_rate=16000, padding="longest", return_tensors="pt")["input_values"].to(device)
             for c in clips]

    def run_alone():
        for features in alone:
            ours(features)

    with torch.inference_mode():
        batched_logits = ours(**batch).logits
        alone_logits = torch.cat([ours(features).logits for features in alone])
        diff = (batched_logits - alone_logits).abs().max().item()
        timings = compare({"alone": run_alone, "batched": lambda: ours(**batch)}, repeats=repeats,
                          warmup=args.warmup, device=device, min_uncontended=min(3, repeats), max_extra=repeats)
    flops = sum(ast_forward_flops(config, 1, num_frames=f.shape[1]) for f in alone)
    group = "mixed 1/2.5/5/10 s"
    report.add(group, "hf-ast, each clip alone", timings["alone"], flops)
    row = report.add(group, "hf-ast, one masked batch", timings["batched"], flops, baseline=timings["alone"],
                     max_abs_diff=diff)
    row["cost_vs_alone"] = 1 / row["speedup"]
    report.note(f"mixed batch: cost per clip in the batch / cost alone = {row['cost_vs_alone']:.2f} (target <= 1.1)")

    report.print_table()
    report.write(args.json)


if __name__ == "__main__":
    main()
