"""HEAR timestamp embeddings: which method places sound events in time better (hf_ast.hear).

A frame-level task built for the question. Each recording is `--duration` seconds (6 s) of low
white noise with 2 to 4 events drawn from `hf_ast.training.synthetic` (its eight classes, 0.5-1.5 s each,
noise bursts only where their bursts are) at random times, so events overlap, start mid-window and
straddle the model's input length. Every 50 ms timestamp is labelled with the classes sounding
there. A linear probe (standardised embeddings, one logistic regression per class, as HEAR's
frame-level tasks train a shallow classifier on frozen embeddings) is fitted on the training
recordings and scored on the test recordings, whose source parameters come from the generator's
held-out ranges:

  mAP            macro average precision over all test timestamps
  boundary mAP   the same over timestamps within 250 ms of an event's onset or offset, where
                 time resolution decides
  s / min        embedding time per minute of audio (the machine's load counts too)

Rows: `windows` at several window lengths, `patches`, and the log-mel frame at each timestamp
without a model (128 values: what time resolution alone buys).

    python benchmarks/bench_hear_timestamps.py [--model demo_output/ast-sound-events] [--num-train 160]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hf_ast import hear
from hf_ast.training.synthetic import SOUND_EVENT_CLASSES, SPLITS, draw_source_params, render_source

RATE = 16000
BOUNDARY_S = 0.25


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(hear.DEMO_MODEL), help="hf-ast or transformers AST classifier")
    parser.add_argument("--num-train", type=int, default=160, help="training recordings for the probe")
    parser.add_argument("--num-test", type=int, default=80, help="test recordings (held-out source parameters)")
    parser.add_argument("--duration", type=float, default=6.0, help="recording length in seconds")
    parser.add_argument("--windows", type=float, nargs="+", default=[0.25, 0.35, 0.5, 1.0, 1.98],
                        help="window lengths (s) of the windows method; at most the model's input")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/bench_hear_timestamps.json")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# The task: generated recordings with event intervals
# ---------------------------------------------------------------------------------------------


def make_recording(rng, split: str, duration_s: float):
    """`(samples,)` float32 audio and its events `[(class index, start_s, end_s), ...]`."""
    num_samples = int(round(duration_s * RATE))
    audio = rng.standard_normal(num_samples) * 10 ** (rng.uniform(-60, -45) / 20)
    events = []
    for _ in range(int(rng.integers(2, 5))):
        index = int(rng.integers(len(SOUND_EVENT_CLASSES)))
        params = draw_source_params(rng, SOUND_EVENT_CLASSES[index], split, duration_s=1.5)  # 0.5-1.5 s long
        params["onset_s"] = float(rng.uniform(0, duration_s - params["duration_s"]))
        audio += render_source(rng, params, num_samples, RATE)
        if params["class_name"] == "noise_burst":  # sounding only during its bursts
            events += [(index, params["onset_s"] + at, params["onset_s"] + at + length)
                       for at, length in zip(params["burst_onsets_s"], params["burst_s"])]
        else:
            events.append((index, params["onset_s"], params["onset_s"] + params["duration_s"]))
    audio *= min(1.0, 0.95 / float(np.abs(audio).max()))
    return audio.astype(np.float32), events


def frame_labels(events, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(T, classes)` 0/1 labels at `times_s`, and `(T,)` whether each time is near an event boundary."""
    labels = np.zeros((len(times_s), len(SOUND_EVENT_CLASSES)), dtype=np.int64)
    near = np.zeros(len(times_s), dtype=bool)
    for index, start, end in events:
        labels[(times_s >= start) & (times_s < end), index] = 1
        near |= (np.abs(times_s - start) <= BOUNDARY_S) | (np.abs(times_s - end) <= BOUNDARY_S)
    return labels, near


# ---------------------------------------------------------------------------------------------
# Embeddings and the probe
# ---------------------------------------------------------------------------------------------


def logmel_frames(model: hear.HearAstModel, audio: torch.Tensor, times_ms: torch.Tensor) -> torch.Tensor:
    """The normalised log-mel frame centred nearest each timestamp: `(n, T, bins)`, no model."""
    features, _ = model.features(audio)  # (n, frames, bins)
    index = torch.round((times_ms - 12.5) / 10).long()  # frame i is centred at 10 i + 12.5 ms
    index = index.clamp(0, features.shape[1] - 1)
    return features[:, index]


def embed(method: str, model: hear.HearAstModel, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """`(recordings * T, C)` embeddings, `(T,)` timestamps in seconds, and the seconds it took."""
    batch = torch.from_numpy(audio)
    start = time.perf_counter()
    outputs = []
    for first in range(0, len(batch), 16):
        chunk = batch[first : first + 16]
        if method == "log-mel frame":
            timestamps = hear.timestamps_ms(1000 * chunk.shape[1] / RATE, model.hop_ms)[None]
            embeddings = logmel_frames(model, chunk, timestamps[0])
        else:
            embeddings, timestamps = hear.get_timestamp_embeddings(chunk, model)
        outputs.append(embeddings.cpu().numpy())
    elapsed = time.perf_counter() - start
    embeddings = np.concatenate(outputs)  # (recordings, T, C)
    return embeddings.reshape(-1, embeddings.shape[-1]), timestamps[0].double().numpy() / 1000, elapsed


def probe_scores(train_x, train_y, test_x) -> np.ndarray:
    """Per-class logistic regressions on standardised embeddings -> `(test, classes)` scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    scores = np.zeros((len(test_x), train_y.shape[1]))
    for column in range(train_y.shape[1]):
        classifier = LogisticRegression(C=1.0, max_iter=2000).fit(train_x, train_y[:, column])
        scores[:, column] = classifier.decision_function(test_x)
    return scores


def macro_ap(labels, scores) -> float:
    from sklearn.metrics import average_precision_score

    present = [c for c in range(labels.shape[1]) if labels[:, c].any()]
    return float(np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in present]))


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    data = {}
    for split, count in zip(SPLITS, (args.num_train, args.num_test)):
        rng = np.random.default_rng([args.seed, SPLITS.index(split), 7])
        recordings = [make_recording(rng, split, args.duration) for _ in range(count)]
        data[split] = (np.stack([audio for audio, _ in recordings]), [events for _, events in recordings])
    print(f"{args.num_train} training and {args.num_test} test recordings of {args.duration:g} s, model {args.model}")

    methods = [(f"windows {w:g} s", dict(timestamp_method="windows", window_s=w)) for w in args.windows]
    methods += [("patches", dict(timestamp_method="patches")), ("log-mel frame", dict(timestamp_method="patches"))]
    rows = []
    for name, options in methods:
        model = hear.load_model(args.model, **options)
        embedded = {}
        seconds = 0.0
        for split, (audio, events) in data.items():
            x, times_s, elapsed = embed(name, model, audio)
            seconds += elapsed
            labels, near = zip(*(frame_labels(recording_events, times_s) for recording_events in events))
            embedded[split] = (x, np.concatenate(labels), np.concatenate(near))
        (train_x, train_y, _), (test_x, test_y, test_near) = embedded["train"], embedded["test"]
        scores = probe_scores(train_x, train_y, test_x)
        minutes = (args.num_train + args.num_test) * args.duration / 60
        rows.append({
            "method": name, "dim": int(train_x.shape[1]), "mAP": macro_ap(test_y, scores),
            "boundary_mAP": macro_ap(test_y[test_near], scores[test_near]), "s_per_min": seconds / minutes,
        })
        print(f"  {name}: mAP {rows[-1]['mAP']:.3f}, boundary mAP {rows[-1]['boundary_mAP']:.3f}", flush=True)

    print("\n| method | dim | mAP | boundary mAP | s / min of audio |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['dim']} | {row['mAP']:.3f} | {row['boundary_mAP']:.3f} "
              f"| {row['s_per_min']:.1f} |")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
