"""hf-ast end to end in one minute: DeiT -> AST -> saved model -> pipeline() on spoken audio.

Offline (the default), ImageNet weights cannot be downloaded, so a small DeiT-shaped checkpoint
is built locally with random weights and the 384 px / 16 px geometry of
facebook/deit-base-distilled-patch16-384 (24x24 position grid). With network access, pass a
Hub id instead:

    python examples/demo.py --deit facebook/deit-base-distilled-patch16-384

The head of a model initialised this way is untrained, so its scores mean nothing until it is
fine-tuned (examples/run_audioset.py); the demo shows that every step runs.
"""

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, pipeline

import hf_ast  # noqa: F401  (registers the Auto classes)
from hf_ast import HfAstFeatureExtractor, HfAstForAudioClassification

# A few AudioSet classes, so the printed labels look like the real task.
LABELS = ["Speech", "Music", "Dog", "Siren", "Rain", "Engine", "Silence"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deit", default=None, help="DeiT/ViT Hub id, local dir or timm file (default: build one locally)")
    parser.add_argument("--output_dir", default="demo_output", help="where the DeiT, the AST and the audio are written")
    parser.add_argument("--text", default="Hello! This sentence is classified by an audio spectrogram transformer.",
                        help="sentence spoken by espeak-ng and classified")
    parser.add_argument("--max_length", type=int, default=1024, help="frames of the AST input (1024 = 10.24 s)")
    return parser.parse_args()


def build_local_deit(directory: Path) -> Path:
    """A DeiT-tiny-sized distilled DeiT at 384 px (24x24 grid), random weights, saved as transformers saves it."""
    config = DeiTConfig(image_size=384, patch_size=16, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                        intermediate_size=768, num_labels=1000)
    torch.manual_seed(0)
    DeiTForImageClassificationWithTeacher(config).save_pretrained(directory)
    return directory


def speak(text: str, path: Path) -> np.ndarray:
    """16 kHz mono speech from espeak-ng, or a 440 Hz tone where espeak-ng is missing."""
    if shutil.which("espeak-ng") and shutil.which("sox"):
        raw = path.with_suffix(".raw.wav")
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(path)], check=True)
        audio, _ = soundfile.read(path, dtype="float32")
        return audio
    print("espeak-ng/sox not found: classifying a 440 Hz tone instead (scripts/setup.sh installs them)")
    audio = (0.5 * np.sin(2 * np.pi * 440 * np.arange(48000) / 16000)).astype(np.float32)
    soundfile.write(path, audio, 16000)
    return audio


def main():
    args = parse_args()
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    # 1. The image model to start from.
    source = args.deit or str(build_local_deit(output / "deit-local"))
    print(f"[1/4] image backbone: {source}")

    # 2. The paper's initialisation: RGB kernels -> 1 channel, 24x24 positions -> 12x101 audio grid.
    start = time.perf_counter()
    model = HfAstForAudioClassification.from_deit(
        source,
        max_length=args.max_length,
        id2label=dict(enumerate(LABELS)),
        problem_type="multi_label_classification",  # AudioSet is multi-label: sigmoid scores
    )
    f, t = model.config.patch_grid
    print(f"[2/4] AST from DeiT in {time.perf_counter() - start:.1f} s: {model.num_parameters() / 1e6:.1f} M parameters, "
          f"{f} x {t} = {f * t} patches")

    # 3. Save model + feature extractor: the directory loads with AutoModel*/pipeline, and with
    #    trust_remote_code=True where hf_ast is not installed.
    model_dir = output / "ast-from-deit"
    model.save_pretrained(model_dir)
    HfAstFeatureExtractor(max_length=args.max_length).save_pretrained(model_dir)
    print(f"[3/4] saved to {model_dir}: {sorted(p.name for p in model_dir.iterdir())}")

    # 4. Classify real (synthetic) speech through the stock pipeline.
    wav = output / "speech.wav"
    audio = speak(args.text, wav)
    classifier = pipeline("audio-classification", model=str(model_dir))
    start = time.perf_counter()
    results = classifier(str(wav), top_k=len(LABELS))
    print(f"[4/4] {wav} ({len(audio) / 16000:.1f} s) classified in {time.perf_counter() - start:.2f} s "
          "(untrained head: scores are not meaningful yet)")
    for result in results:
        print(f"    {result['label']:<8} {result['score']:.3f} {'#' * round(result['score'] * 40)}")


if __name__ == "__main__":
    main()
