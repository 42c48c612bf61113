"""A Gradio app for an AST audio classifier, as audio models show themselves on the Hub.

Upload a recording or speak into the microphone; the app shows the top labels (`gr.Label`). A
recording longer than the model's input (10.24 s for AudioSet models, 1.98 s for the offline
demo's) is classified in windows with `hf_ast.score_windows`: the labels are then each class's
best window, and a timeline plot (spectrogram over window scores) and a table of every window's
labels appear below.

    python examples/app.py                                   # the model examples/demo.py trains (offline)
    python examples/app.py MIT/ast-finetuned-audioset-10-10-0.4593
    hf-ast-app path/to/model --port 7860                     # the same, installed with pip install "hf-ast[app]"

MODEL is any Hub id or local directory of an hf-ast or transformers AST classifier. The server
listens on 127.0.0.1 unless `--host` (or GRADIO_SERVER_NAME) says otherwise. As a Hugging Face
Space (built by examples/make_space.py), this file is the Space's `app.py`, showing the model
folder beside it (`model/`) or the one named by the Space variable HF_AST_APP_MODEL.
"""

import argparse
import html
import os
import tempfile
import uuid
from pathlib import Path

import gradio as gr
from transformers.pipelines.audio_classification import ffmpeg_read

import hf_ast  # noqa: F401  (registers the Auto classes)
from hf_ast import HfAstFeatureExtractor, HfAstForAudioClassification, plot_long_audio, score_windows

DEMO_MODEL = Path("demo_output") / "ast-sound-events"
MODEL_ENV = "HF_AST_APP_MODEL"
BUNDLED_MODEL = Path(__file__).resolve().parent / "model"  # a Space's own copy (examples/make_space.py)
TOP_K = 5
# Per-window labels shown in the table.
WINDOW_LABELS = 3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None,
                        help=f"Hub id or local directory (default: ${MODEL_ENV}, else a model/ folder beside "
                             f"this file, else the demo's {DEMO_MODEL})")
    parser.add_argument("--host", default=None,
                        help="address to listen on (default: 127.0.0.1, or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=None, help="port (default: 7860, or the next free one)")
    parser.add_argument("--top-k", type=int, default=TOP_K, help="labels shown")
    parser.add_argument("--chunk-length-s", type=float, default=None,
                        help="window length for long recordings (default: the model's input, at most 10 s)")
    parser.add_argument("--stride-length-s", type=float, default=0.0,
                        help="overlap of consecutive windows in seconds (0: they tile the recording)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k {args.top_k}: show at least one label")
    return args


def demo_model_dirs() -> list[Path]:
    """Where the demo's model may be: under the working directory, or the repository holding this file."""
    return [Path.cwd() / DEMO_MODEL, Path(__file__).resolve().parent.parent / DEMO_MODEL]


def resolve_model(model: str | None) -> str:
    """The model to load: the argument, else $HF_AST_APP_MODEL, else a Space's model/, else the demo's model."""
    model = model or os.environ.get(MODEL_ENV)
    if model:
        return model
    for candidate in [BUNDLED_MODEL, *demo_model_dirs()]:
        if (candidate / "config.json").is_file():
            return str(candidate)
    raise SystemExit(
        f"no model given and the demo's model ({DEMO_MODEL}) is not there. Train it offline with "
        "`python examples/demo.py`, or pass a Hub id or directory: "
        f"`python examples/app.py MIT/ast-finetuned-audioset-10-10-0.4593` (or set {MODEL_ENV})."
    )


def load_classifier(model: str) -> tuple[HfAstForAudioClassification, HfAstFeatureExtractor]:
    """Classifier and feature extractor of an hf-ast or transformers AST checkpoint, ready for inference."""
    classifier = HfAstForAudioClassification.from_pretrained(model).eval()
    extractor = HfAstFeatureExtractor.from_pretrained(model)
    return classifier, extractor


def input_seconds(extractor: HfAstFeatureExtractor) -> float:
    """Length of the model's input: `max_length` Kaldi frames of 25 ms every 10 ms."""
    return (extractor.window_size + (extractor.max_length - 1) * extractor.hop_length) / extractor.sampling_rate


def classify(audio_path, classifier, extractor, top_k=TOP_K, chunk_length_s=None, stride_length_s=0.0,
             plot_dir=None):
    """One recording -> (labels for `gr.Label`, timeline plot path or None, per-window rows or None).

    A recording that fits the model's input is one window and gets exactly the stock pipeline's
    scores; a longer one gets each class's best window (`aggregate="max"`), the plot and the rows.
    """
    if audio_path is None:
        raise gr.Error("Upload a recording or record one with the microphone first.")
    rate = extractor.sampling_rate
    with open(audio_path, "rb") as file:
        audio = ffmpeg_read(file.read(), rate)  # mono float32 at the model's rate, any format FFmpeg reads
    if audio.shape[0] < extractor.window_size:
        raise gr.Error(f"The recording is {audio.shape[0] / rate * 1000:.0f} ms long; it needs at least 25 ms.")
    windows = score_windows(classifier, extractor, audio, rate, chunk_length_s=chunk_length_s,
                            stride_length_s=stride_length_s)
    result = windows.to_dict(top_k=None)
    labels = {entry["label"]: entry["score"] for entry in result["labels"][:top_k]}
    if len(windows.timestamps) == 1:
        return labels, None, None
    plot = Path(plot_dir or tempfile.gettempdir()) / f"timeline-{uuid.uuid4().hex}.png"
    plot_long_audio(windows, audio, rate, extractor, plot, top_k=top_k)
    rows = [
        [f"{start:.2f}", f"{end:.2f}",
         ", ".join(f"{entry['label']} {entry['score']:.2f}" for entry in chunk["labels"][:WINDOW_LABELS])]
        for chunk, (start, end) in zip(result["chunks"], windows.timestamps)
    ]
    return labels, str(plot), rows


def build_demo(classifier, extractor, model_name: str, top_k=TOP_K, chunk_length_s=None, stride_length_s=0.0):
    """The Blocks app: audio in; labels, and for long recordings a timeline plot and a window table, out."""
    seconds = input_seconds(extractor)
    plot_dir = tempfile.mkdtemp(prefix="hf-ast-app-")
    label_names = list(classifier.config.id2label.values())
    shown = ", ".join(label_names[:12]) + (f" and {len(label_names) - 12} more" if len(label_names) > 12 else "")

    def run(audio_path):
        labels, plot, rows = classify(audio_path, classifier, extractor, top_k, chunk_length_s, stride_length_s,
                                      plot_dir)
        long = plot is not None
        return (
            labels,
            gr.Image(value=plot, visible=long),
            gr.Dataframe(value=rows if long else [], visible=long),
        )

    with gr.Blocks(title=f"AST: {model_name}") as demo:
        gr.Markdown(
            f"# Audio Spectrogram Transformer\n"
            f"Model `{html.escape(model_name)}`: {len(label_names)} labels ({html.escape(shown)}); input "
            f"{seconds:.2f} s. Longer recordings are classified in windows, with a timeline below."
        )
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Recording")
                button = gr.Button("Classify", variant="primary")
            with gr.Column():
                labels = gr.Label(num_top_classes=top_k, label="Top labels", elem_id="top-labels")
        timeline = gr.Image(label="Timeline", show_label=False, visible=False, type="filepath", elem_id="timeline")
        table = gr.Dataframe(headers=["start (s)", "end (s)", "window labels"], label="Windows", visible=False,
                             interactive=False, elem_id="windows")
        button.click(run, inputs=audio, outputs=[labels, timeline, table], api_name="classify")
    return demo


def main(argv=None):
    args = parse_args(argv)
    model = resolve_model(args.model)
    classifier, extractor = load_classifier(model)
    demo = build_demo(classifier, extractor, model, top_k=args.top_k, chunk_length_s=args.chunk_length_s,
                      stride_length_s=args.stride_length_s)
    # System fonts: the default theme fetches web fonts, which an offline machine cannot.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    demo.launch(server_name=args.host, server_port=args.port, theme=theme)


if __name__ == "__main__":
    main()
