"""examples/app.py as a person uses it: a server on 127.0.0.1, driven by gradio_client and a headless browser.

The expected labels are computed here with the model itself (extractor + forward pass, windows cut
here), not through the app's helpers. The browser test uses Debian's chromium (scripts/setup.sh
installs it) through playwright; it is skipped, with the reason printed, only where no browser can
start. Its screenshot is kept in outputs/test-artifacts/app.png.
"""

import contextlib
import json
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


@contextlib.contextmanager
def serve_app(argv, cwd, log: Path, env=None):
    """Run `python ARGV` (the app on 127.0.0.1:port) in `cwd` until it answers; yield its URL, stop it after."""
    port = free_port()
    env = {**(os.environ if env is None else env), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, *argv, "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=output, stderr=subprocess.STDOUT, env=env, cwd=cwd)
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


@pytest.fixture(scope="module")
def app_url(classifier_dir, tmp_path_factory):
    """`python examples/app.py MODEL --host 127.0.0.1 --port N`, stopped when the module's tests end."""
    log = tmp_path_factory.mktemp("app-log") / "app.log"
    with serve_app([str(APP), str(classifier_dir)], ROOT, log) as url:
        yield url


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


def upload_and_classify(browser, url: str, wav):
    """A new page on the app: `wav` set on the upload button's file input, then Classify clicked."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("input[type=file]", state="attached", timeout=60_000)
    page.set_input_files("input[type=file]", str(wav))
    page.get_by_role("button", name="Classify").click()
    return page


def top_label(page) -> str:
    """The label component's top class: gr.Label shows it as its heading, then every class with its score."""
    return page.locator("#top-labels").inner_text().split("\n")[1].strip()


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
            page = upload_and_classify(browser, app_url, paths["long"])
            sync_api.expect(page.locator("#top-labels")).to_contain_text(expected, timeout=60_000)
            sync_api.expect(page.locator("#windows")).to_contain_text("2.59", timeout=30_000)
            page.wait_for_timeout(1000)  # let the timeline image finish drawing
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            screenshot = ARTIFACTS / "app.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
            assert top_label(page) == expected
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


# --- The app as a Hugging Face Space (examples/make_space.py) ------------------------------------

MAKE_SPACE = ROOT / "examples" / "make_space.py"


def load_make_space():
    return load_module(MAKE_SPACE, "hf_ast_make_space_under_test")


@pytest.fixture(scope="module")
def space_dir(classifier_dir, tmp_path_factory):
    """A Space built from the classifier's training folder, which also holds what must stay behind."""
    source = tmp_path_factory.mktemp("trained")
    shutil.copytree(classifier_dir, source, dirs_exist_ok=True)
    (source / "step_10").mkdir()  # a checkpoint folder and pickled weights, as a training run may leave
    (source / "step_10" / "optimizer.bin").write_bytes(b"not for the Space")
    (source / "pytorch_model.bin").write_bytes(b"pickled weights are never copied")
    return load_make_space().build_space(str(source), tmp_path_factory.mktemp("space") / "space")


def test_space_folder_holds_what_the_space_runs(space_dir):
    from huggingface_hub import metadata_load

    files = {path.relative_to(space_dir).as_posix() for path in space_dir.rglob("*") if path.is_file()}
    assert {"app.py", "requirements.txt", "packages.txt", "README.md", "hf_ast/__init__.py",
            "hf_ast/modeling_hf_ast.py", "hf_ast/training/loop.py"} <= files
    assert {name for name in files if name.startswith("model/")} == {
        "model/config.json", "model/preprocessor_config.json", "model/model.safetensors"}  # no checkpoint, no pickle
    assert not any("__pycache__" in name for name in files)
    assert (space_dir / "app.py").read_bytes() == APP.read_bytes()
    assert (space_dir / "packages.txt").read_text().split() == ["ffmpeg"]
    import gradio

    front = metadata_load(space_dir / "README.md")  # the front matter the Hub reads
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["sdk_version"] == gradio.__version__
    assert front["title"].startswith("AST: trained")  # from the model folder's name; ": " needs YAML quoting
    assert "models" not in front  # the model is inside the Space


def test_space_runs_as_built_with_its_own_copies(space_dir, classifier_dir, recordings, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_AST_APP_MODEL"}  # the Space's model/ is the default
    imported = subprocess.run([sys.executable, "-c", "import hf_ast; print(hf_ast.__file__)"], cwd=space_dir,
                              env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(imported).resolve() == (space_dir / "hf_ast" / "__init__.py").resolve()  # not the installed one
    paths, clips = recordings
    expected = expected_scores(classifier_dir, clips["short"])
    with serve_app(["app.py"], space_dir, tmp_path / "space.log", env=env) as url:
        client = gradio_client.Client(url, verbose=False)
        labels, _, _ = client.predict(gradio_client.handle_file(str(paths["short"])), api_name="/classify")
    assert labels["label"] == LABELS[int(expected.argmax())]
    shown = {entry["label"]: entry["confidence"] for entry in labels["confidences"]}
    np.testing.assert_allclose([shown[LABELS[i]] for i in range(3)], expected, atol=1e-4)


SPACE_PROBE = """
import importlib.machinery, importlib.util, json, sys

HIDDEN = set(json.loads(sys.argv[1]))


class HidingPathFinder(importlib.machinery.PathFinder):
    # As if the hidden distributions were not installed: find_spec finds nothing, import fails.
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return super().find_spec(name, path, target)


sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = HidingPathFinder
spec = importlib.util.spec_from_file_location("space_app", sys.argv[2])
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
classifier, extractor = app.load_classifier(sys.argv[3])
for wav in sys.argv[4:]:  # a one-window and a timeline recording: every import the app makes at run time
    app.classify(wav, classifier, extractor)
app.build_demo(classifier, extractor, sys.argv[3])
print("the app ran")
"""


def test_space_requirements_are_all_the_app_needs(classifier_dir, recordings, tmp_path):
    """With every installed distribution that requirements.txt does not bring hidden, the app still runs."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = (ROOT / "examples" / "requirements.txt").read_text().splitlines()
    listed = {canonicalize_name(Requirement(line).name) for line in lines if line.strip() and not line.startswith("#")}
    brought, todo = set(), list(listed)
    while todo:  # the listed distributions and, transitively, what they require (extras left out)
        name = todo.pop()
        if name in brought:
            continue
        brought.add(name)
        try:
            needs = requires(name) or []
        except PackageNotFoundError:
            continue
        for need in map(Requirement, needs):
            if need.marker is None or need.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(need.name))
    brought.add("hf-ast")  # the Space carries hf_ast/ itself
    hidden = sorted(module for module, dists in packages_distributions().items()
                    if not {canonicalize_name(dist) for dist in dists} & brought)
    assert {"datasets", "accelerate", "evaluate", "pytest"} <= set(hidden)  # the probe hides what it should
    paths, _ = recordings
    result = subprocess.run(
        [sys.executable, "-c", SPACE_PROBE, json.dumps(hidden), str(APP), str(classifier_dir),
         str(paths["short"]), str(paths["long"])],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0 and "the app ran" in result.stdout, (
        f"the app needs more than requirements.txt installs:\n{result.stderr[-3000:]}")


def test_make_space_refuses_what_a_space_cannot_run(tmp_path):
    make_space = load_make_space()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        make_space.build_space("user/model", tmp_path / "full")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"no safetensors weights \(only pickled \['pytorch_model.bin'\]\)"):
        make_space.build_space(str(pickled), tmp_path / "out-1")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        make_space.build_space(str(tmp_path / "full"), tmp_path / "out-2")
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a Hub id"):
        make_space.build_space("not/a/model/path", tmp_path / "out-3")


@pytest.mark.parametrize("model", ["local", "hub id"])
def test_push_creates_the_space_with_its_files_and_model(model, classifier_dir, tmp_path):
    from hub_server import LoopbackHub, hub_env

    token = "hf_spaceTestToken0987654321"
    argument = str(classifier_dir) if model == "local" else "test-user/tiny-ast"
    with LoopbackHub() as hub:
        env = {**hub_env(hub, tmp_path / "hf-home"), "HF_TOKEN": token}
        result = subprocess.run([sys.executable, str(MAKE_SPACE), argument, str(tmp_path / "space"),
                                 "--push", "test-user/ast-app"], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        tree = hub.commits("spaces/test-user/ast-app")[-1].tree
        variables = hub.variables.get("test-user/ast-app", {})
        readme = hub.read("spaces/test-user/ast-app", "README.md").decode()
    assert {"app.py", "requirements.txt", "packages.txt", "README.md", "hf_ast/__init__.py"} <= set(tree)
    assert token not in result.stdout + result.stderr
    if model == "local":
        assert "model/model.safetensors" in tree and variables == {}
    else:
        assert not any(name.startswith("model/") for name in tree)
        assert variables == {"HF_AST_APP_MODEL": "test-user/tiny-ast"} and "- test-user/tiny-ast" in readme
