"""Build, and optionally push, a Hugging Face Space that shows a model with the Gradio app (examples/app.py).

    python examples/make_space.py demo_output/ast-sound-events space/            # a folder to run or upload
    cd space && python app.py                                                     # the Space, run locally
    python examples/make_space.py MIT/ast-finetuned-audioset-10-10-0.4593 space/ --push you/ast-audioset

The folder holds what the Space runs: `app.py` (examples/app.py), `requirements.txt`
(examples/requirements.txt), `packages.txt` (FFmpeg, which the app decodes recordings with),
`hf_ast/` (this package, so the Space needs no release of it) and a README whose front matter
selects the Gradio SDK. The model is either copied in or named:

- a local model directory is copied in as `model/` (config, feature extractor config and
  safetensors weights only: no checkpoints, no pickle), which the app loads by default;
- a Hub id is listed in the README's `models:` and, with --push, set as the Space variable
  HF_AST_APP_MODEL, which the app reads (run locally: `HF_AST_APP_MODEL=ID python app.py`).

--push creates the Space (Gradio SDK; `exist_ok`, so a second push updates it) and uploads the
folder. It authenticates with the token of `hf auth login` or $HF_TOKEN: none is taken on the
command line, where the process list and shell history would show it.
"""

import argparse
import json
import shutil
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
PACKAGE = EXAMPLES.parent / "hf_ast"
MODEL_ENV = "HF_AST_APP_MODEL"  # the app's variable (examples/app.py)
BUNDLED_MODEL = "model"  # the app's folder for a model copied into the Space
# What from_pretrained needs of a classifier folder; training outputs (checkpoints, epoch results,
# optimizer state) stay behind, and pickled weights (`*.bin`) are never copied.
MODEL_FILES = ("config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="local model directory (copied in) or Hub id (named)")
    parser.add_argument("output_dir", help="the Space's folder; created, and must be empty if it exists")
    parser.add_argument("--title", default=None, help="the Space's title (default: from the model's name)")
    parser.add_argument("--push", metavar="REPO_ID", default=None,
                        help="create or update this Space (namespace/name) and upload the folder")
    parser.add_argument("--private", action="store_true", help="with --push: create the Space private")
    return parser.parse_args(argv)


def copy_model(model_dir: Path, target: Path) -> list[str]:
    """Copy a classifier's loading files from `model_dir` into `target`; return their names."""
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json; pass the folder a model was saved to "
                                "(save_pretrained, or the training script's --output_dir)")
    files = sorted({path for pattern in MODEL_FILES for path in model_dir.glob(pattern)})
    if not any(path.name.endswith(".safetensors") for path in files):
        pickled = sorted(path.name for path in model_dir.glob("*.bin"))
        raise FileNotFoundError(
            f"{model_dir} has no safetensors weights{f' (only pickled {pickled})' if pickled else ''}; the Space "
            "loads safetensors only. Re-save the model with `model.save_pretrained(DIR)`, which writes them.")
    target.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, target / path.name)
    return [path.name for path in files]


def readme(title: str, model: str | None) -> str:
    """The Space's README: front matter (Gradio SDK at the version used here) and one paragraph."""
    import gradio

    models = f"models:\n  - {model}\n" if model else ""
    title = json.dumps(title)  # a JSON string is a YAML string: a title may hold ": "
    source = f"[{model}](https://huggingface.co/{model})" if model else "the model in `model/`"
    return (
        f"---\ntitle: {title}\nsdk: gradio\nsdk_version: {gradio.__version__}\napp_file: app.py\n{models}---\n\n"
        f"Audio classification with an Audio Spectrogram Transformer ({source}): upload a recording or use "
        "the microphone for its top labels; a recording longer than the model's input is classified in "
        "windows, with a timeline. Built with hf-ast's `examples/make_space.py`.\n"
    )


def build_space(model: str, output_dir, title: str | None = None) -> Path:
    """Write the Space's folder for `model` (a local directory, copied in, or a Hub id) into `output_dir`."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty; pass a new or empty folder for the Space")
    output_dir.mkdir(parents=True, exist_ok=True)
    local = Path(model).is_dir()
    if local:
        copy_model(Path(model), output_dir / BUNDLED_MODEL)
    elif Path(model).exists() or model.count("/") > 1:
        raise FileNotFoundError(f"{model} is neither a model directory nor a Hub id (name or namespace/name)")
    shutil.copy2(EXAMPLES / "app.py", output_dir / "app.py")
    shutil.copy2(EXAMPLES / "requirements.txt", output_dir / "requirements.txt")
    (output_dir / "packages.txt").write_text("ffmpeg\n")  # Debian packages: the app decodes audio with FFmpeg
    shutil.copytree(PACKAGE, output_dir / "hf_ast", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    name = Path(model).resolve().name if local else model.split("/")[-1]
    (output_dir / "README.md").write_text(readme(title or f"AST: {name}", None if local else model))
    return output_dir


def push_space(folder, repo_id: str, model: str | None = None, private: bool = False) -> str:
    """Create (or update) the Space `repo_id` from `folder`; name a Hub `model` in its variable. Return its URL."""
    from huggingface_hub import HfApi

    api = HfApi()  # the token of `hf auth login` or $HF_TOKEN
    url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="space",
                      commit_message="Space built by hf-ast's examples/make_space.py")
    if model is not None:
        api.add_space_variable(repo_id, MODEL_ENV, model, description="the model the app shows (hf-ast)")
    return str(url)


def main(argv=None):
    args = parse_args(argv)
    folder = build_space(args.model, args.output_dir, args.title)
    hub_model = None if Path(args.model).is_dir() else args.model
    run = f"cd {folder} && {f'{MODEL_ENV}={hub_model} ' if hub_model else ''}python app.py"
    print(f"Space folder: {folder} (to run it here: {run})")
    if args.push:
        print(f"Space pushed: {push_space(folder, args.push, hub_model, args.private)}")


if __name__ == "__main__":
    main()
