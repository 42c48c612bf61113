"""Long audio in sliding windows: cost against single-window calls (performance target 5).

The claim: 60 s classified as six 10 s windows by `hf_ast.classify_long_audio` (features extracted
and the model run `batch_size` windows at a time) costs no more than about 1.15x running the same
six windows one at a time through the extractor and the model, so cost is linear in duration.

Rows (random weights; AudioSet geometry and width, 527 labels; `--quick`: a narrow 4-layer model):
  60 s, six 10 s windows   6 x single window (the baseline: extractor + model per window, by hand),
                           classify_long_audio with batch_size 6, and
                           pipeline("audio-classification-long") on the same array
  linear in duration       classify_long_audio on 20 and 60 s: the time per window should not grow

    python benchmarks/bench_long_audio.py [--quick] [--device cuda] [--repeats N] [--threads N]
"""

import numpy as np
import torch

from common import Report, base_config, base_parser, compare, setup

RATE = 16000
CHUNK_S = 10.0


def main(argv=None):
    parser = base_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="recording length of the main comparison")
    args = parser.parse_args(argv)
    device = setup(args)
    repeats = args.repeats or 2  # about 3 minutes at the base geometry on 2 cores
    report = Report("bench_long_audio", args, device)

    from transformers import pipeline

    from hf_ast import HfAstFeatureExtractor, HfAstForAudioClassification, classify_long_audio

    narrow = dict(hidden_size=192, num_attention_heads=3, intermediate_size=768, num_hidden_layers=4)
    config = base_config(problem_type="multi_label_classification", **(narrow if args.quick else {}))
    torch.manual_seed(0)
    model = HfAstForAudioClassification(config).to(device).eval()
    extractor = HfAstFeatureExtractor()
    generator = np.random.default_rng(0)
    recording = (generator.standard_normal(int(args.seconds * RATE)) * 0.1).astype(np.float32)
    window = int(CHUNK_S * RATE)
    windows = [recording[start : start + window] for start in range(0, len(recording), window)]

    @torch.inference_mode()
    def single_windows():
        for clip in windows:
            features = extractor(clip, sampling_rate=RATE, return_tensors="pt").to(device)
            model(**features)

    def helper(audio, batch_size):
        with torch.inference_mode():
            return classify_long_audio(model, extractor, audio, RATE, chunk_length_s=CHUNK_S, batch_size=batch_size)

    classifier = pipeline("audio-classification-long", model=model, feature_extractor=extractor, device=device)
    assert len(helper(recording, len(windows))["chunks"]) == len(windows)

    # -- 1. six windows: batched helper and pipeline against single-window calls -----------------
    group = f"{args.seconds:g} s, {len(windows)} windows"
    candidates = {
        f"{len(windows)} x single window": single_windows,
        f"classify_long_audio bs={len(windows)}": lambda: helper(recording, len(windows)),
        f"pipeline bs={len(windows)}": lambda: classifier(recording, chunk_length_s=CHUNK_S, batch_size=len(windows)),
    }
    timings = compare(candidates, repeats=repeats, warmup=args.warmup, device=device)
    baseline = timings[f"{len(windows)} x single window"]
    for name, timing in timings.items():
        report.add(group, name, timing, baseline=None if timing is baseline else baseline,
                   cost_vs_single=timing.median / baseline.median)

    # -- 2. linear in duration --------------------------------------------------------------------
    per_window = {}
    for seconds in (20.0, 60.0):
        audio = (generator.standard_normal(int(seconds * RATE)) * 0.1).astype(np.float32)
        count = int(np.ceil(seconds / CHUNK_S))
        timing = compare({f"{seconds:g} s": lambda: helper(audio, 6)}, repeats=repeats, warmup=args.warmup,
                         device=device)[f"{seconds:g} s"]
        per_window[seconds] = timing.median / count
        report.add("linear in duration", f"classify_long_audio {seconds:g} s bs=6", timing,
                   windows=count, ms_per_window=per_window[seconds] * 1000)

    # -- summary ----------------------------------------------------------------------------------
    report.print_table()
    print()
    print(f"{'candidate':<34} {'median':>10} {'vs single calls':>16}  uncontended")
    for row in report.rows:
        if "cost_vs_single" in row:
            print(f"{row['name']:<34} {row['median_s'] * 1000:8.0f} ms {row['cost_vs_single']:15.2f}x  "
                  f"{row['uncontended']}/{row['repeats']}")
    for row in report.rows:
        if "ms_per_window" in row:
            print(f"{row['name']:<34} {row['median_s'] * 1000:8.0f} ms {row['ms_per_window']:11.0f} ms/window  "
                  f"{row['uncontended']}/{row['repeats']}")
    print("target: the batched helper costs <= 1.15x the single-window calls; ms/window flat in duration")
    report.write(args.json)


if __name__ == "__main__":
    main()
