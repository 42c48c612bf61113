"""Memory (target 8): peak RSS of a batch-1 base forward, each model alone in a fresh process.

The base model (random weights) is saved once; then for each of hf-ast and transformers a new
Python process imports only what it needs, loads the model from that folder, runs one fp32
forward on a 10 s input under `torch.inference_mode()` and reports its peak resident set size
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) before and after the forward. Repeated
`--repeats` times, alternating, reporting the medians.

    python benchmarks/bench_memory.py [--quick]
"""

import json
import statistics
import subprocess
import sys
import tempfile

import torch

from common import Report, Timing, base_config, base_parser, setup, twin_models

CHILD = r"""
import json, resource, sys, time
import torch
which, directory, device, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
if which == "hf-ast":
    from hf_ast import HfAstForAudioClassification as Model
else:
    from transformers import ASTForAudioClassification as Model
model = Model.from_pretrained(directory, attn_implementation="sdpa").eval().to(device)
x = torch.randn(1, 1024, 128, device=device) * 0.5
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
wall, cpu = time.perf_counter(), time.process_time()
with torch.inference_mode():
    model(x)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
print(json.dumps({"loaded_mib": loaded / 1024, "peak_mib": peak / 1024, "gpu_peak_mib": gpu, "wall": wall, "cpu": cpu}))
"""


def main(argv=None):
    parser = base_parser(__doc__)
    args = parser.parse_args(argv)
    device = setup(args)
    repeats = args.repeats or (1 if args.quick else 3)
    report = Report("bench_memory", args, device)
    ours, _ = twin_models(base_config())
    results = {"hf-ast": [], "transformers": []}
    with tempfile.TemporaryDirectory() as directory:
        ours.save_pretrained(directory)
        del ours
        for round_ in range(repeats):
            for which in (["transformers", "hf-ast"] if round_ % 2 == 0 else ["hf-ast", "transformers"]):
                run = subprocess.run([sys.executable, "-c", CHILD, which, directory, str(device),
                                      str(torch.get_num_threads())], capture_output=True, text=True, check=True)
                results[which].append(json.loads(run.stdout.strip().splitlines()[-1]))
    baseline_peak = statistics.median(r["peak_mib"] for r in results["transformers"])
    for which in ("transformers", "hf-ast"):
        runs = results[which]
        timing = Timing(which, wall=[r["wall"] for r in runs], cpu=[r["cpu"] for r in runs],
                        threads=torch.get_num_threads(), device_type=device.type)
        peak = statistics.median(r["peak_mib"] for r in runs)
        extra = {"peak_rss_mib": peak, "loaded_rss_mib": statistics.median(r["loaded_mib"] for r in runs),
                 "forward_rss_mib": statistics.median(r["peak_mib"] - r["loaded_mib"] for r in runs)}
        if device.type == "cuda":
            extra["gpu_peak_mib"] = statistics.median(r["gpu_peak_mib"] for r in runs)
        if which == "hf-ast":
            extra["peak_vs_transformers"] = peak / baseline_peak
        report.add("memory batch 1", f"{which} (own process)", timing, **extra)
        print(f"  {which}: peak RSS {peak:.0f} MiB (after loading {extra['loaded_rss_mib']:.0f} MiB, "
              f"forward adds {extra['forward_rss_mib']:.0f} MiB)", flush=True)
    report.print_table()
    report.write(args.json)


if __name__ == "__main__":
    main()
