"""ONNX export (target 6): onnxruntime on the exported base model against transformers in torch fp32.

The base geometry with random weights shared by hf-ast and transformers is exported with
`hf_ast.export.export_onnx` (dynamic batch), checked against torch (max abs difference), and
timed in onnxruntime's CPU provider against transformers' `ASTForAudioClassification` (sdpa) at
batch 1. Export time is reported, not timed against anything.

    python benchmarks/bench_export.py [--quick]
"""

import tempfile
import time
from pathlib import Path

import torch

from common import Report, ast_forward_flops, base_config, base_parser, compare, setup, twin_models


def main(argv=None):
    parser = base_parser(__doc__)
    args = parser.parse_args(argv)
    device = setup(args)
    repeats = args.repeats or (3 if args.quick else 5)
    import onnxruntime

    from hf_ast.export import export_onnx

    report = Report("bench_export", args, device)
    report.measure_peaks(quick=args.quick)
    config = base_config()
    ours, theirs = twin_models(config)
    theirs = theirs.to(device)
    x = torch.randn(1, config.max_length, config.num_mel_bins, generator=torch.Generator().manual_seed(0)) * 0.5
    with tempfile.TemporaryDirectory() as directory:
        began = time.perf_counter()
        path = export_onnx(ours, Path(directory) / "ast.onnx")
        export_s = time.perf_counter() - began
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"input_values": x.numpy()}
        with torch.inference_mode():
            expected = ours(x).logits.numpy()
        diff = float(abs(session.run(["logits"], feed)[0] - expected).max())
        x_device = x.to(device)
        with torch.inference_mode():
            timings = compare({"transformers": lambda: theirs(x_device),
                               "onnxruntime": lambda: session.run(["logits"], feed)},
                              repeats=repeats, warmup=args.warmup, device=device,
                              min_uncontended=min(3, repeats), max_extra=repeats)
    flops = ast_forward_flops(config, 1)
    report.add("onnx batch 1", f"transformers torch fp32 ({device.type})", timings["transformers"], flops)
    report.add("onnx batch 1", "hf-ast ONNX, onnxruntime CPU", timings["onnxruntime"], flops,
               baseline=timings["transformers"], max_abs_diff=diff, export_s=export_s)
    report.print_table()
    report.write(args.json)


if __name__ == "__main__":
    main()
