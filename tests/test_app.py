"""examples/app.py as a person uses it: a server on 127.0.0.1, driven by gradio_client and a headless browser.

The expected labels are computed here with the model itself (extractor + forward pass, windows cut
here), not through the app's helpers. The browser test uses Debian's chromium (scripts/setup.sh
installs it) through playwright; it is skipped, with the reason printed, only where no browser can
start. Its screenshot is kept in outputs/test-artifacts/app.png.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import load_module, randomize_, tiny_model

import hf_ast

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "app.py"
ARTIFACTS = ROOT / "outputs" / "test-artifacts"
RATE = 16000
MAX_LENGTH = 128  # frames: the tiny model hears 400 + 127 * 160 = 20 720 samples (1.295 s) at a time
LABELS = {0: "tone", 1: "noise_burst", 2: "clicks"}
STARTUP_TIMEOUT_S = 180

gradio_client = pytest.importorskip("gradio_client", reason="pip install -e '.[dev]' installs gradio_client")


def load_app_module():
    return load_module(APP, "hf_ast_app_under_test")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("app-model")
    model = tiny_model(seed=3, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model.save_pretrained(directory)
    hf_ast.HfAstFeatureExtractor(max_length=MAX_LENGTH).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    directory = tmp_path_factory.mktemp("recordings")
    t = np.arange(3 * RATE) / RATE
    clips = {
        "short": (0.5 * np.sin(2 * np.pi * 440 * t[:RATE])).astype(np.float32),  # 1 s: one window
        "long": (0.3 * np.sin(2 * np.pi * 880 * t) * (t > 1.5)  # 3 s, a tone in the second half: three windows
                 + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32),
    }
    paths = {}
    for name, audio in clips.items():
        paths[name] = directory / f"{name}.wav"
        soundfile.write(paths[name], audio, RATE, subtype="FLOAT")
    return paths, clips


def expected_scores(classifier_dir, audio: np.ndarray) -> np.ndarray:
    """Per class the best window's softmax score; windows tile the recording at the model's input length."""
    model = hf_ast.HfAstForAudioClassification.from_pretrained(classifier_dir).eval()
    extractor = hf_ast.HfAstFeatureExtractor.from_pretrained(classifier_dir)
    window = 400 + (MAX_LENGTH - 1) * 160
    scores = []
    for start in range(0, audio.size, window):
        features = extractor(audio[start : start + window], sampling_rate=RATE, return_tensors="pt")
        with torch.no_grad():
            scores.append(model(**features).logits.softmax(-1)[0].numpy())
    return np.max(scores, axis=0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(classifier_dir, tmp_path_factory):
    """`python examples/app.py MODEL --host 127.0.0.1 --port N`, stopped when the module's tests end."""
    port = free_port()
    log = tmp_path_factory.mktemp("app-log") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as output:
        server = subprocess.Popen(
            [sys.executable, str(APP), str(classifier_dir), "--host", "127.0.0.1", "--port", str(port)],
            stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"the app exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the app did not answer on {url} within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_client_labels_an_uploaded_recording(app_url, classifier_dir, recordings):
    paths, clips = recordings
    expected = expected_scores(classifier_dir, clips["short"])
    client = gradio_client.Client(app_url, verbose=False)
    labels, timeline, table = client.predict(gradio_client.handle_file(str(paths["short"])), api_name="/classify")
    assert labels["label"] == LABELS[int(expected.argmax())]
    shown = {entry["label"]: entry["confidence"] for entry in labels["confidences"]}
    np.testing.assert_allclose([shown[LABELS[i]] for i in range(3)], expected, atol=1e-4)
    assert timeline["visible"] is False and table["visible"] is False  # one window: no timeline


def test_client_gets_a_timeline_for_a_long_recording(app_url, classifier_dir, recordings):
    paths, clips = recordings
    expected = expected_scores(classifier_dir, clips["long"])
    client = gradio_client.Client(app_url, verbose=False)
    labels, timeline, table = client.predict(gradio_client.handle_file(str(paths["long"])), api_name="/classify")
    assert labels["label"] == LABELS[int(expected.argmax())]
    assert timeline["visible"] is True and Path(timeline["value"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = table["value"]["data"]
    assert [row[:2] for row in rows] == [["0.00", "1.29"], ["1.29", "2.59"], ["2.59", "3.00"]]


def launch_chromium(playwright):
    """Debian's chromium (or another installed Chromium) through playwright; None and the reason where none starts."""
    executable = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                       if shutil.which(name)), None)
    if executable is None:
        return None, "no chromium binary on PATH (scripts/setup.sh installs Debian's chromium)"
    try:
        # --no-sandbox: the sandbox needs user namespaces, which containers and root sessions often lack.
        return playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"]), None
    except Exception as error:  # noqa: BLE001  (any launch failure means: no browser here)
        return None, f"{executable} did not start: {str(error).splitlines()[0]}"


def test_browser_upload_shows_the_label(app_url, classifier_dir, recordings):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' installs playwright")
    paths, clips = recordings
    expected = LABELS[int(expected_scores(classifier_dir, clips["long"]).argmax())]
    with sync_api.sync_playwright() as playwright:
        browser, reason = launch_chromium(playwright)
        if browser is None:
            print(f"SKIPPED: {reason}")
            pytest.skip(reason)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(app_url, wait_until="domcontentloaded")
            page.wait_for_selector("input[type=file]", state="attached", timeout=60_000)
            page.set_input_files("input[type=file]", str(paths["long"]))  # the upload button's file input
            page.get_by_role("button", name="Classify").click()
            label = page.locator("#top-labels")
            sync_api.expect(label).to_contain_text(expected, timeout=60_000)
            sync_api.expect(page.locator("#windows")).to_contain_text("2.59", timeout=30_000)
            page.wait_for_timeout(1000)  # let the timeline image finish drawing
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            screenshot = ARTIFACTS / "app.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
            # gr.Label shows the top class as its heading, then every class with its score.
            assert label.inner_text().split("\n")[1].strip() == expected
        finally:
            browser.close()


def test_transformers_checkpoint_gets_transformers_labels(tmp_path, recordings):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       max_length=MAX_LENGTH, num_labels=3, id2label=LABELS,
                       label2id={v: k for k, v in LABELS.items()})
    reference = randomize_(ASTForAudioClassification(config), seed=4)
    reference.save_pretrained(tmp_path)
    reference_extractor = ASTFeatureExtractor(max_length=MAX_LENGTH)
    reference_extractor.save_pretrained(tmp_path)
    paths, clips = recordings
    features = reference_extractor(clips["short"], sampling_rate=RATE, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**features).logits.softmax(-1)[0].numpy()

    app = load_app_module()
    classifier, extractor = app.load_classifier(str(tmp_path))
    labels, timeline, rows = app.classify(str(paths["short"]), classifier, extractor, top_k=3)
    assert next(iter(labels)) == LABELS[int(expected.argmax())]
    np.testing.assert_allclose([labels[LABELS[i]] for i in range(3)], expected, atol=1e-4)
    assert timeline is None and rows is None


def test_without_a_model_the_app_says_how_to_get_one(tmp_path, monkeypatch):
    app = load_app_module()
    monkeypatch.delenv(app.MODEL_ENV, raising=False)
    monkeypatch.setattr(app, "demo_model_dirs", lambda: [tmp_path / "no-demo-here"])
    with pytest.raises(SystemExit, match="examples/demo.py"):
        app.resolve_model(None)
    monkeypatch.setenv(app.MODEL_ENV, "some/model")
    assert app.resolve_model(None) == "some/model"


def test_console_script_runs_the_app(capsys):
    from importlib.metadata import entry_points

    scripts = [entry for entry in entry_points(group="console_scripts") if entry.name == "hf-ast-app"]
    if not scripts:
        reason = "hf-ast-app is not installed in this environment; pip install -e . installs it"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    main = scripts[0].load()
    assert Path(sys.modules[main.__module__].__file__).resolve() == APP  # the console script is examples/app.py
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "HF_AST_APP_MODEL" in capsys.readouterr().out
