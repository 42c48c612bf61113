"""Feature extraction: `HfAstFeatureExtractor` against transformers' `ASTFeatureExtractor` (target 4).

Rows: a batch of 16 ten-second clips (the training collator's case) and a single clip, both
padded to 1024 frames and normalised as transformers does; the max abs difference of the
features is reported. transformers' extractor runs torchaudio's Kaldi fbank clip by clip on the
CPU; hf-ast runs the batch as one tensor program (on `--device` when it is cuda).

    python benchmarks/bench_features.py [--quick] [--device cuda]
"""

import numpy as np

from common import Report, base_parser, compare, setup


def main(argv=None):
    parser = base_parser(__doc__)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    device = setup(args)
    repeats = args.repeats or (5 if args.quick else 15)

    from transformers import ASTFeatureExtractor

    from hf_ast import HfAstFeatureExtractor

    report = Report("bench_features", args, device)
    ours, theirs = HfAstFeatureExtractor(), ASTFeatureExtractor()
    rng = np.random.default_rng(0)
    samples = int(args.seconds * 16000)
    # Noise plus a slow drift, so the per-frame DC removal matters.
    clips = [(rng.standard_normal(samples) * 0.1 + 0.2 * np.sin(np.arange(samples) / 2000 + i)).astype(np.float32)
             for i in range(args.batch_size)]

    for label, batch in ((f"batch {args.batch_size}", clips), ("1 clip", clips[:1])):
        expected = theirs(batch, sampling_rate=16000, return_tensors="pt")["input_values"]
        got = ours(batch, sampling_rate=16000, return_tensors="pt", device=device)["input_values"]
        diff = (got.cpu() - expected).abs().max().item()
        timings = compare(
            {
                "transformers": lambda: theirs(batch, sampling_rate=16000, return_tensors="pt"),
                "hf-ast": lambda: ours(batch, sampling_rate=16000, return_tensors="pt", device=device),
            },
            repeats=repeats, warmup=args.warmup, device=device,
        min_uncontended=min(3, repeats), max_extra=repeats,
        )
        group = f"features {label}"
        report.add(group, "transformers ASTFeatureExtractor (cpu)", timings["transformers"])
        report.add(group, f"hf-ast HfAstFeatureExtractor ({device.type})", timings["hf-ast"],
                   baseline=timings["transformers"], max_abs_diff=diff)

    report.print_table()
    report.write(args.json)


if __name__ == "__main__":
    main()
