"""`run_audioset.py --push_to_hub` against a loopback Hub, then loading the repo by its id without hf_ast.

Both the training run and the loading run are subprocesses: `HF_ENDPOINT` is read when
huggingface_hub is imported, and this test process already imported it in offline mode.
"""

import contextlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import hub_server
import numpy as np
import pytest
import soundfile
import torch
from conftest import BLOCK_HF_AST, save_tiny_deit
from hub_server import LoopbackHub, hub_env

from hf_ast import HfAstFeatureExtractor, HfAstForAudioClassification
from hf_ast.training.synthetic import write_sound_events_audiofolder

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "test-user/tiny-ast"
EPOCHS = 2
CODE_FILES = ("configuration_hf_ast.py", "modeling_hf_ast.py", "feature_extraction_hf_ast.py")
TOKEN = "hf_loopbackTestToken1234567890"  # distinctive: a plain byte search finds it wherever it lands


def run(argv, env, cwd, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


class RecordingHandler(hub_server.Handler):
    """The loopback Hub's handler, also keeping each request's Authorization header and repo-creation payload."""

    def handle_request(self):
        self.server.hub.authorizations.append(self.headers.get("Authorization"))
        super().handle_request()

    do_GET = do_HEAD = do_POST = handle_request

    def body(self) -> bytes:
        content = super().body()
        if self.path.startswith("/api/repos/create"):
            self.server.hub.created.append(json.loads(content))
        return content


@contextlib.contextmanager
def recording_hub():
    """A LoopbackHub served by RecordingHandler."""
    hub = LoopbackHub()
    hub.authorizations, hub.created = [], []
    handler, hub_server.Handler = hub_server.Handler, RecordingHandler  # LoopbackHub builds its server with it
    try:
        hub.__enter__()
    finally:
        hub_server.Handler = handler
    try:
        yield hub
    finally:
        hub.__exit__(None, None, None)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A two-epoch run on 32 one-second clips with a tiny DeiT, pushed to a loopback Hub that stays up."""
    tmp = tmp_path_factory.mktemp("push")
    save_tiny_deit(tmp / "deit")
    data = write_sound_events_audiofolder(tmp / "data", num_train=32, num_test=8, seed=0, duration_s=1.0)
    output = tmp / "run"
    with recording_hub() as hub:
        result = run([str(ROOT / "examples" / "run_audioset.py"),
             "--dataset_name", str(data), "--model_name_or_path", str(tmp / "deit"), "--output_dir", str(output),
             "--recipe", "none", "--max_length", "98", "--per_device_train_batch_size", "8",
             "--learning_rate", "1e-3", "--warmup_steps", "0", "--num_train_epochs", str(EPOCHS), "--mixup", "0",
             "--freq_mask", "0", "--time_mask", "0", "--no-balanced_sampling", "--weight_averaging_start_epoch", "0",
             "--seed", "7", "--checkpointing_steps", "epoch",  # checkpoints are written, and must not be pushed
             "--push_to_hub", "--hub_model_id", REPO_ID, "--hub_private_repo", "--hub_token", TOKEN,
             "--with_tracking"],  # TensorBoard's hparams file and events see every argument too
            env=hub_env(hub, tmp / "hf_home_train"), cwd=tmp)
        yield hub, output, data, result.stdout + result.stderr


def test_every_epoch_and_the_end_are_pushed_without_checkpoints(pushed):
    hub, output, _, _ = pushed
    commits = hub.commits(REPO_ID)
    assert [c.message for c in commits] == [f"epoch {e}" for e in range(1, EPOCHS + 1)] + ["final model"]
    assert len({c.sha for c in commits}) == len(commits)
    assert (output / "checkpoints" / f"epoch_{EPOCHS}").is_dir()  # written locally ...
    assert not [p for c in commits for p in c.added if p.startswith("checkpoints/")]  # ... never uploaded

    final = commits[-1].tree
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", *CODE_FILES, "README.md",
                 "training_curves.png", "all_results.json"):
        assert name in final, name
    assert "all_results.json" not in commits[0].tree and "epoch_1_results.json" in commits[0].tree
    # The Hub holds exactly the final local output (minus checkpoints).
    for name in final:
        assert hub.read(REPO_ID, name) == (output / name).read_bytes(), name
    assert hub.read(REPO_ID, "model.safetensors", revision=commits[0].sha) != hub.read(REPO_ID, "model.safetensors")
    card = hub.read(REPO_ID, "README.md").decode()
    assert card.startswith("---\n") and f'model="{REPO_ID}"' in card and f"| {EPOCHS} |" in card


LOAD_BY_ID = BLOCK_HF_AST + textwrap.dedent(
    """

    import numpy as np
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline

    repo_id, clip = sys.argv[1], np.load(sys.argv[2])
    model = AutoModelForAudioClassification.from_pretrained(repo_id, trust_remote_code=True).eval()
    extractor = AutoFeatureExtractor.from_pretrained(repo_id, trust_remote_code=True)
    with torch.no_grad():
        logits = model(**extractor(clip, sampling_rate=16000, return_tensors="pt")).logits[0]
    classifier = pipeline("audio-classification", model=repo_id, trust_remote_code=True)
    print(json.dumps({
        "module": type(model).__module__, "logits": logits.tolist(),
        "pipeline": {r["label"]: r["score"] for r in classifier(clip, top_k=None)},
        "hf_ast_loaded": any(name == "hf_ast" or name.startswith("hf_ast.") for name in sys.modules),
    }))
    """
)


def test_the_token_authenticates_the_push_and_is_never_logged_saved_or_uploaded(pushed):
    hub, output, _, log = pushed
    assert hub.authorizations and set(hub.authorizations) == {f"Bearer {TOKEN}"}  # every call used it
    # --hub_private_repo (huggingface_hub 2.x sends "visibility", 1.x "private")
    assert hub.created and all(p.get("visibility") == "private" or p.get("private") is True for p in hub.created)
    assert list(output.rglob("hparams.yml")) and list(output.rglob("events.out.tfevents.*"))  # tracking ran
    secret = TOKEN.encode()
    assert [str(p.relative_to(output)) for p in output.rglob("*") if p.is_file() and secret in p.read_bytes()] == []
    assert TOKEN not in log
    uploaded = {oid: path for commit in hub.commits(REPO_ID) for path, oid in commit.tree.items()}
    assert uploaded and [path for oid, path in uploaded.items() if secret in (hub.blobs / oid).read_bytes()] == []


def test_the_pushed_repo_loads_by_id_where_hf_ast_is_not_installed(pushed, tmp_path):
    hub, output, data, _ = pushed
    clip, rate = soundfile.read(sorted((data / "test").glob("*.wav"))[0], dtype="float32")
    assert rate == 16000
    np.save(tmp_path / "clip.npy", clip)
    (tmp_path / "load_by_id.py").write_text(LOAD_BY_ID)
    seen = len(hub.requests)
    stdout = run([str(tmp_path / "load_by_id.py"), REPO_ID, str(tmp_path / "clip.npy")],
                 env=hub_env(hub, tmp_path / "hf_home_load"), cwd=tmp_path).stdout
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["module"].startswith("transformers_modules.") and not result["hf_ast_loaded"]
    fetched = {r.rsplit("/", 1)[-1] for r in hub.requests[seen:] if r.startswith(f"GET /{REPO_ID}/resolve/")}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", *CODE_FILES} <= fetched

    # The same numbers as the local output_dir loaded with hf_ast.
    model = HfAstForAudioClassification.from_pretrained(output).eval()
    assert model.config.problem_type == "multi_label_classification"
    with torch.no_grad():
        expected = model(**HfAstFeatureExtractor.from_pretrained(output)(
            clip, sampling_rate=16000, return_tensors="pt")).logits[0]
    np.testing.assert_allclose(result["logits"], expected.numpy(), atol=1e-5)
    assert len(result["pipeline"]) == model.config.num_labels
    for label, score in result["pipeline"].items():  # multi-label: independent sigmoids
        assert score == pytest.approx(expected.sigmoid()[model.config.label2id[label]].item(), abs=1e-5)
