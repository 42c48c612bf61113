from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

# Training, evaluation and plotting (examples/run_audioset.py, hf_ast.training).
TRAIN = [
    "accelerate>=1.0",
    "datasets[audio]>=4.0",
    "evaluate>=0.4",
    "tqdm>=4.60",
    "matplotlib>=3.6",
    "tensorboard>=2.10",
    "soundfile>=0.12",
]
# Fast inference: ONNX export (torch's dynamo exporter needs onnxscript; onnxruntime checks the
# graph) and torchao's int8 quantisation (`optimize_for_inference(model, "int8")`).
EXPORT = ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18", "torchao>=0.12"]
# The Gradio app (examples/app.py, `hf-ast-app`): gradio 6 takes the theme in launch(); its plot needs matplotlib.
APP = ["gradio>=6.0,<7", "gradio_client>=2.0,<3", "matplotlib>=3.6"]
# Tests: independent references (scikit-learn, scipy, timm), the test runner and the linter (ruff, which
# .ci/run runs). playwright drives a headless browser through the app in tests/test_app.py, with Debian's
# chromium binary (scripts/setup.sh installs it; `playwright install` would download a browser).
DEV = ["pytest>=8", "ruff>=0.6", "scikit-learn>=1.3", "scipy>=1.10", "timm>=1.0", "playwright>=1.40"] + EXPORT + APP

setup(
    name="hf-ast",
    version="0.1.0",
    description="Audio Spectrogram Transformer (Gong et al. 2021) as a Transformers-compatible model",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    # examples/ installs as `hf_ast_examples`, so the app has a console script (`hf-ast-app`).
    packages=find_packages(include=["hf_ast", "hf_ast.*"]) + ["hf_ast_examples"],
    package_dir={"hf_ast_examples": "examples"},
    # evaluate loads the metric script from its path (it is not imported), so it ships as data.
    package_data={"hf_ast.training.metrics": ["audio_classification/*.py", "audio_classification/README.md"]},
    python_requires=">=3.10",
    # Ranges that GPU machines really carry (torch 2.11, transformers 5.17) up to today's releases.
    install_requires=[
        "torch>=2.4",
        "torchaudio>=2.4",
        "transformers>=5.0,<6",
        "huggingface-hub>=1.0",
        "safetensors>=0.4",
        "numpy>=1.24",
    ],
    extras_require={"train": TRAIN, "export": EXPORT, "app": APP, "dev": TRAIN + DEV},
    entry_points={
        "console_scripts": [
            "hf-ast-convert=hf_ast.conversion.cli:main",
            "hf-ast-export=hf_ast.export:main",
            "hf-ast-soup=hf_ast.training.averaging:main",
            "hf-ast-synthetic=hf_ast.training.synthetic:main",
            "hf-ast-app=hf_ast_examples.app:main",
        ]
    },
)
