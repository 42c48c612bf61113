"""The demo's trained model through HEAR and the app, beside a transformers copy of it.

    python examples/demo.py                  # trains demo_output/ast-sound-events offline (about 5 minutes)
    .venv/bin/python scripts/check_demo_model.py [--model DIR] [--screenshot docs/app.png]

The tests run HEAR and the app on tiny models; this runs them on a trained one:

1. `hf-ast-convert to-transformers` writes a transformers copy (ASTForAudioClassification).
2. HEAR (`hf_ast.hear`) on both: scene and timestamp embeddings of an 8 s recording of generated
   events, which must agree; and the scene embedding of a clip of exactly the model's input
   against transformers' own pooled output, computed here with transformers' classes.
3. The app's labels (`classify` of examples/app.py) for the recording, from both.
4. The reference validator (`hearvalidator`), where installed, on both (tensorflow stubbed as in
   tests/test_hear.py where it is missing).
5. With --screenshot: the app served on the model, the recording uploaded in headless Chromium
   (as tests/test_app.py does), the page saved: README's picture is made this way.

Prints one line per check; exits with status 1 if any fails.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]  # shared helpers of the tests and benchmarks
RATE = 16000
TOLERANCE = 1e-4  # fp32, the same arithmetic in two implementations


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "demo_output" / "ast-sound-events"),
                        help="the trained model (default: the demo's)")
    parser.add_argument("--screenshot", default=None, help="also save the app's page here, e.g. docs/app.png")
    parser.add_argument("--seed", type=int, default=3, help="seed of the generated recording (README's picture: 3)")
    return parser.parse_args(argv)


def recording(seed: int, seconds: float = 8.0):
    """An 8 s recording of generated events (the HEAR timestamp benchmark's), and its events as text."""
    from bench_hear_timestamps import make_recording

    from hf_ast.training.synthetic import SOUND_EVENT_CLASSES

    audio, events = make_recording(np.random.default_rng([seed, 1, 7]), "test", seconds)
    return audio, ", ".join(f"{SOUND_EVENT_CLASSES[c]} {a:.1f}-{b:.1f} s" for c, a, b in events)


def hear_embeddings(model_dir: str, audio: np.ndarray):
    from hf_ast import hear

    model = hear.load_model(model_dir)
    batch = torch.from_numpy(audio)[None]
    scene = hear.get_scene_embeddings(batch, model)
    frames, times = hear.get_timestamp_embeddings(batch, model)
    return model, scene, frames, times


def transformers_pooled(model_dir: str, audio: np.ndarray) -> torch.Tensor:
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    reference = ASTForAudioClassification.from_pretrained(model_dir).eval()
    features = ASTFeatureExtractor.from_pretrained(model_dir)(audio, sampling_rate=RATE, return_tensors="pt")
    with torch.no_grad():
        return reference.audio_spectrogram_transformer(**features).pooler_output


def run_validator(model_dir: str) -> str:
    if importlib.util.find_spec("hearvalidator") is None:
        return "not installed (pip install --no-deps hearvalidator)"
    if importlib.util.find_spec("tensorflow") is None:
        from test_hear import tensorflow_stub

        sys.modules["tensorflow"] = tensorflow_stub()
    from hearvalidator.validate import ValidateModel

    ValidateModel("hf_ast.hear", model_dir, device="cpu")()  # raises ModelError on any violation
    return "passes"


def screenshot(model_dir: str, wav: Path, path: Path):
    """The app on `model_dir`, `wav` uploaded and classified in headless Chromium, the full page saved."""
    from playwright.sync_api import expect, sync_playwright
    from test_app import APP, launch_chromium, serve_app, top_label, upload_and_classify

    shown = os.path.relpath(Path(model_dir).resolve(), ROOT)  # the page names the model as the app was given it
    log = Path(tempfile.mkdtemp(prefix="check-demo-app-")) / "app.log"
    with serve_app([str(APP), shown], ROOT, log) as url, sync_playwright() as playwright:
        browser, reason = launch_chromium(playwright)
        if browser is None:
            raise RuntimeError(f"no screenshot: {reason}")
        try:
            page = upload_and_classify(browser, url, wav)
            expect(page.locator("#windows")).to_contain_text("0.00", timeout=120_000)
            page.wait_for_timeout(2000)  # let the timeline image finish drawing
            page.screenshot(path=str(path), full_page=True)
            return top_label(page)
        finally:
            browser.close()


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = args.model
    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"no model in {model_dir}: train the demo's with `python examples/demo.py`, or pass --model")
    from test_app import load_app_module

    from hf_ast import hear

    results = []

    def check(name: str, passed: bool, detail: str):
        results.append(passed)
        print(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="check-demo-model-"))
    copy = str(work / "transformers-copy")
    subprocess.run([sys.executable, "-m", "hf_ast.conversion.cli", "to-transformers", model_dir, copy], check=True,
                   capture_output=True)
    audio, events = recording(args.seed)
    wav = work / "recording.wav"
    soundfile.write(wav, audio, RATE)
    print(f"model {model_dir}; transformers copy {copy}; recording 8 s: {events}")

    ours, scene, frames, times = hear_embeddings(model_dir, audio)
    _, scene_copy, frames_copy, times_copy = hear_embeddings(copy, audio)
    scene_diff = float((scene - scene_copy).abs().max())
    frame_diff = float((frames - frames_copy).abs().max())
    check("HEAR embeddings, hf-ast vs its transformers copy", max(scene_diff, frame_diff) <= TOLERANCE
          and torch.equal(times, times_copy),
          f"scene {tuple(scene.shape)} max diff {scene_diff:.1e}, timestamps {tuple(frames.shape)} max diff "
          f"{frame_diff:.1e}")
    extractor = ours.feature_extractor  # a clip of exactly max_length frames: no padding on either side
    full = audio[: extractor.window_size + (extractor.max_length - 1) * extractor.hop_length]
    pooled_diff = float((hear.get_scene_embeddings(torch.from_numpy(full)[None], ours)
                         - transformers_pooled(copy, full)).abs().max())
    check("HEAR scene embedding vs transformers' pooled output", pooled_diff <= TOLERANCE,
          f"{full.size / RATE:.2f} s clip, max diff {pooled_diff:.1e}")

    app = load_app_module()
    labels = [app.classify(str(wav), *app.load_classifier(source))[0] for source in (model_dir, copy)]
    label_diff = max(abs(labels[0][name] - labels[1].get(name, -1.0)) for name in labels[0])
    check("app labels, hf-ast vs its transformers copy", list(labels[0]) == list(labels[1])
          and label_diff <= TOLERANCE,
          ", ".join(f"{name} {score:.2f}" for name, score in labels[0].items()) + f"; max diff {label_diff:.1e}")

    for name, source in (("hf-ast", model_dir), ("transformers copy", copy)):
        try:
            outcome = run_validator(source)
            check(f"reference HEAR validator, {name}", True, outcome)
        except Exception as error:  # noqa: BLE001  (the validator's ModelError and whatever else it raises)
            check(f"reference HEAR validator, {name}", False, f"{type(error).__name__}: {error}")

    if args.screenshot:
        top = screenshot(model_dir, wav, Path(args.screenshot))
        check("app in headless Chromium", top == next(iter(labels[0])), f"top label {top}; saved {args.screenshot}")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
