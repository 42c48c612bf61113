"""Export an hf-ast classifier to ONNX and check onnxruntime against torch.

    python -m hf_ast.export onnx MODEL_DIR OUT.onnx [--opset 18] [--dynamic-time] [--atol 1e-4]
    hf-ast-export onnx MODEL_DIR OUT.onnx            # the same, as installed by setup.py

The graph takes `input_values` `(batch, frames, num_mel_bins)` float32 (the feature extractor's
output) and returns `logits` `(batch, num_labels)`; the batch axis is dynamic. With
`--dynamic-time` the frame axis is dynamic too (padding-free inference of clips up to
`max_length` frames: the patches take the leading columns of the trained position grid).
After exporting, the command runs onnxruntime and torch on the same random inputs (two batch
sizes, and two lengths with `--dynamic-time`), prints the largest difference and fails above
`--atol`. The graph is written to a temporary file beside OUT.onnx and replaces OUT.onnx only once
the check passes: when it fails, an existing OUT.onnx is left untouched and the failed graph is
kept as OUT.failed-check.onnx for inspection.

Uses torch's dynamo-based exporter (`torch.onnx.export(..., dynamo=True)`), which needs
`onnxscript`; onnxruntime runs the check. `pip install "hf-ast[export]"` installs both.
"""

import argparse
import importlib.util
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


class LogitsOnly(nn.Module):
    """`input_values -> logits`: the classifier with a tensor output, as ONNX graphs want."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.model(input_values, return_dict=True).logits


def export_onnx(model: nn.Module, path, opset: int | None = 18, dynamic_time: bool = False,
                example_frames: int | None = None) -> Path:
    """Write `model` (an `HfAstForAudioClassification`, eval mode, float32) to `path` as ONNX."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter imports it)
    except ImportError:
        raise ImportError(
            'ONNX export needs onnxscript (pip install "hf-ast[export]" or pip install onnxscript)'
        ) from None
    config = model.config
    # An example shorter than max_length, so tracing does not tie the frame axis to it.
    frames = example_frames or (max(config.patch_size, config.max_length // 2) if dynamic_time else config.max_length)
    example = torch.randn(2, frames, config.num_mel_bins)
    batch = torch.export.Dim("batch", min=1, max=4096)
    axes = {0: batch}
    if dynamic_time:
        # At least one patch, at most the trained grid (longer inputs need position interpolation).
        axes[1] = torch.export.Dim("frames", min=config.patch_size, max=config.max_length)
    wrapper = LogitsOnly(model.eval().float()).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, opset_version=opset, input_names=["input_values"],
            output_names=["logits"], dynamic_shapes={"input_values": axes}, external_data=False,
        )
    program.save(str(path))
    return path


def check_onnx(model: nn.Module, path, dynamic_time: bool = False, atol: float = 1e-4, seed: int = 0) -> float:
    """Largest |onnxruntime - torch| over a few input shapes; raises when it exceeds `atol`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    shapes = [(1, config.max_length), (3, config.max_length)]
    if dynamic_time:
        shapes += [(2, max(config.patch_size, config.max_length // 3)), (1, config.patch_size + 7)]
    worst = 0.0
    for batch_size, frames in shapes:
        x = torch.randn(batch_size, frames, config.num_mel_bins, generator=generator) * 0.5
        with torch.no_grad():
            expected = model(x).logits.float().numpy()
        got = session.run(["logits"], {"input_values": x.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        print(f"  onnxruntime vs torch, input {tuple(x.shape)}: max abs diff {diff:.2e}")
        worst = max(worst, diff)
    if worst > atol:
        raise RuntimeError(f"onnxruntime differs from torch by {worst:.2e} > atol {atol:.0e}; the export is wrong.")
    return worst


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="format", required=True)
    onnx = sub.add_parser("onnx", help="ONNX graph input_values -> logits, checked with onnxruntime")
    onnx.add_argument("model", help="hf-ast (or transformers AST) model directory or Hub id")
    onnx.add_argument("output", help="the .onnx file to write")
    onnx.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    onnx.add_argument("--dynamic-time", action="store_true", help="dynamic frame axis (clips up to max_length)")
    onnx.add_argument("--atol", type=float, default=1e-4, help="largest accepted onnxruntime-torch difference")
    onnx.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    return parser.parse_args(argv)


def failed_check_path(target: Path) -> Path:
    """Where a graph that failed the onnxruntime check is kept: `model.onnx` -> `model.failed-check.onnx`."""
    return target.with_name(f"{target.stem}.failed-check{target.suffix}")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .conversion.state_dicts import source_not_found
    from .modeling_hf_ast import HfAstForAudioClassification

    target = Path(args.output)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder; pass the .onnx file to write, e.g. {target / 'model.onnx'}")
    if not args.no_check and importlib.util.find_spec("onnxruntime") is None:
        raise ImportError('the check needs onnxruntime (pip install "hf-ast[export]" or pip install onnxruntime); '
                          "or pass --no-check")
    with source_not_found(args.model):
        model = HfAstForAudioClassification.from_pretrained(args.model, attn_implementation="sdpa").eval().float()
    # Exported beside the target and moved over it only once checked, so a failed export or check
    # never replaces a good graph.
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}.onnx")
    try:
        export_onnx(model, partial, opset=args.opset, dynamic_time=args.dynamic_time)
        print(f"exported {partial.stat().st_size / 1e6:.1f} MB, opset {args.opset}, dynamic batch"
              f"{' and frames' if args.dynamic_time else ''}")
        if not args.no_check:
            try:
                worst = check_onnx(model, partial, dynamic_time=args.dynamic_time, atol=args.atol)
            except Exception as error:
                failed = failed_check_path(target)
                os.replace(partial, failed)
                kept = f"{target} is unchanged" if target.exists() else f"{target} was not written"
                raise RuntimeError(f"{error} {kept}; the failed graph is kept as {failed} to inspect.") from error
            print(f"onnxruntime matches torch: max abs diff {worst:.2e} <= {args.atol:.0e}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
