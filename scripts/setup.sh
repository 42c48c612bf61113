#!/usr/bin/env bash
# Installs what hf-ast needs on a fresh Debian machine with Python 3.11, into ./.venv:
# FFmpeg (torchcodec decodes audio with it), espeak-ng and sox (tests make speech with them),
# chromium (tests/test_app.py drives the Gradio app in it through playwright), a torch/torchaudio
# pair that runs on a CPU-only machine, the package with its [dev] extras (test tools and the linter, ruff),
# and HEAR's reference validator.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in ffmpeg espeak-ng sox chromium; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${missing[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)

# This machine's tested pair; torchaudio 2.11 wheels need torch's CUDA libraries, which the
# torch 2.14.1 wheel brings (it also runs on the CPU). setup.py itself declares open ranges.
if ! .venv/bin/python -c "import torch, torchaudio" >/dev/null 2>&1; then
  echo "setup: installing torch 2.14.1 + torchaudio 2.11.0 (about a minute)"
  "${pip[@]}" "torch==2.14.1" "torchaudio==2.11.0"
fi
"${pip[@]}" -e ".[dev]" "transformers==5.23.0" "datasets==5.2.0" "accelerate==1.15.0" "huggingface-hub==2.4.0" \
  "ruff==0.17.6"
# HEAR's reference validator, without its tensorflow requirement: it imports tensorflow only to
# recognise TensorFlow models, and tests/test_hear.py stands a stub in for it (README, HEAR).
"${pip[@]}" --no-deps "hearvalidator==2021.0.2"
echo "setup: ready ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
