"""Memory (target 8): peak RSS of a batch-1 base forward, each model alone in a fresh process.

The base model (random weights) is saved once; then for each of hf-ast and transformers a new
Python process imports only what it needs, loads the model from that folder, runs one fp32
forward on a 10 s input under `torch.inference_mode()` and reports its peak resident set size
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) before and after the forward. Repeated
`--repeats` times, alternating, reporting the medians. The peak is mostly the same for both:
torch and transformers' code (~770 MiB) and the safetensors weights, which stay memory-mapped and
enter the RSS as file pages when the forward first reads them (~340 MiB). What the forward itself
allocates shows in the anonymous part of the RSS, reported as `forward_anon_mib`. A second
group repeats the runs with glibc's mmap threshold fixed (`MALLOC_MMAP_THRESHOLD_=131072`), which
takes the allocator's history out of the peak.

    python benchmarks/bench_memory.py [--quick]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import Report, Timing, base_parser, setup

SAVE = r"""
import sys
from common import base_config, twin_models
twin_models(base_config())[0].save_pretrained(sys.argv[1])
"""

CHILD = r"""
import json, resource, sys, time
import torch

def anon_mib():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return None

which, directory, device, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
if which == "hf-ast":
    from hf_ast import HfAstForAudioClassification as Model
else:
    from transformers import ASTForAudioClassification as Model
model = Model.from_pretrained(directory, attn_implementation="sdpa").eval().to(device)
x = torch.randn(1, 1024, 128, device=device) * 0.5
loaded, anon_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, anon_mib()
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
wall, cpu = time.perf_counter(), time.process_time()
with torch.inference_mode():
    model(x)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
peak, anon_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, anon_mib()
forward_anon = None if anon_loaded is None else anon_after - anon_loaded
gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
print(json.dumps({"loaded_mib": loaded / 1024, "peak_mib": peak / 1024, "gpu_peak_mib": gpu,
                  "forward_anon_mib": forward_anon, "wall": wall, "cpu": cpu}))
"""


# glibc keeps freed blocks for reuse and raises its mmap threshold as large blocks come and go, so
# the default peak also measures allocator history (run-to-run spread ~15 MiB). With a fixed
# threshold, every block over 128 KiB is its own mapping, returned when freed: the peak is then
# the live set, the same in every run.
ALLOCATORS = {
    "memory batch 1": {},
    "memory, fixed mmap threshold": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}


def run_child(which: str, directory: str, device: torch.device, env: dict) -> dict:
    run = subprocess.run([sys.executable, "-c", CHILD, which, directory, str(device), str(torch.get_num_threads())],
                         capture_output=True, text=True, check=True, env={**os.environ, **env})
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = base_parser(__doc__)
    args = parser.parse_args(argv)
    device = setup(args)
    repeats = args.repeats or (1 if args.quick else 5)
    report = Report("bench_memory", args, device)
    with tempfile.TemporaryDirectory() as directory:
        # Saved by a process that then exits: while the writer lives, a reader's RSS takes in the
        # whole weights file at load time (seen: 1126 instead of 782 MiB after loading).
        subprocess.run([sys.executable, "-c", SAVE, directory], check=True, cwd=Path(__file__).parent,
                       capture_output=True)
        for group, env in ALLOCATORS.items():
            results = {"hf-ast": [], "transformers": []}
            for round_ in range(repeats if not env else max(1, repeats // 2)):
                for which in (["transformers", "hf-ast"] if round_ % 2 == 0 else ["hf-ast", "transformers"]):
                    results[which].append(run_child(which, directory, device, env))
            add_rows(report, group, results, device)
    report.print_table()
    report.write(args.json)


def add_rows(report: Report, group: str, results: dict, device: torch.device):
    baseline_peak = statistics.median(r["peak_mib"] for r in results["transformers"])
    for which in ("transformers", "hf-ast"):
        runs = results[which]
        timing = Timing(which, wall=[r["wall"] for r in runs], cpu=[r["cpu"] for r in runs],
                        threads=torch.get_num_threads(), device_type=device.type)
        peak = statistics.median(r["peak_mib"] for r in runs)
        extra = {"peak_rss_mib": peak, "loaded_rss_mib": statistics.median(r["loaded_mib"] for r in runs),
                 "forward_rss_mib": statistics.median(r["peak_mib"] - r["loaded_mib"] for r in runs)}
        if all(r["forward_anon_mib"] is not None for r in runs):
            extra["forward_anon_mib"] = statistics.median(r["forward_anon_mib"] for r in runs)
        if device.type == "cuda":
            extra["gpu_peak_mib"] = statistics.median(r["gpu_peak_mib"] for r in runs)
        if which == "hf-ast":
            extra["peak_vs_transformers"] = peak / baseline_peak
            pairs = list(zip(runs, results["transformers"]))
            extra["rounds_not_higher"] = f"{sum(a['peak_mib'] <= b['peak_mib'] for a, b in pairs)}/{len(pairs)}"
        report.add(group, f"{which} (own process)", timing, **extra)
        print(f"  {which}: peak RSS {peak:.0f} MiB (after loading {extra['loaded_rss_mib']:.0f} MiB, forward adds "
              f"{extra['forward_rss_mib']:.0f} MiB, of which {extra.get('forward_anon_mib', float('nan')):.0f} MiB "
              "anonymous)", flush=True)


if __name__ == "__main__":
    main()
