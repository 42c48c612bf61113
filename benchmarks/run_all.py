"""Run every benchmark, then write one Markdown table of all rows (results_<device>.md) and their JSON.

    python benchmarks/run_all.py            # the full suite: about 10-14 minutes on 2 CPU cores
    python benchmarks/run_all.py --quick    # a smoke run with fewer repetitions
    python benchmarks/run_all.py --device cuda --only inference,features

Each script runs in its own process (bench_memory starts one more per model), writes
benchmarks/results/<script>.<device>.json, and prints its own table as it goes.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["inference", "features", "low_precision", "long_audio", "export", "training", "memory"]


def markdown(results: list[dict], device: str, seconds: float, note: str | None = None) -> str:
    machine = next((r["machine"] for r in results if r.get("machine")), {})
    peaks = next((r["peaks"] for r in results if r.get("peaks")), {})
    lines = [
        f"# hf-ast benchmark results ({device})",
        "",
        f"Machine: {machine.get('cpu')} ({machine.get('cpus')} CPUs, {machine.get('threads')} torch threads, "
        f"ISA {', '.join(machine.get('isa', []))}), torch {machine.get('torch')}, transformers "
        f"{machine.get('transformers')}, Python {machine.get('python')}"
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else "") + ".",
        "",
    ]
    if peaks:
        lines.append("Measured matmul peaks (2048^3): " + ", ".join(
            f"{k} {v['gflops']:.0f} GFLOP/s ({v['uncontended']}/{v['repeats']} uncontended"
            + ("".join(f"; {name} {g:.0f}" for name, g in v["by_kernel"].items()) if len(v.get("by_kernel", {})) > 1
               else "") + ")"
            for k, v in peaks.items()
        ) + ".")
        lines.append("")
    lines += [
        "Times are medians over uncontended repetitions only (process CPU time / wall time >= 0.9 x threads); "
        "`unc` is how many of the repetitions that was. Rows marked *contended* had none: their median is "
        "over all repetitions and is not trustworthy. Speed-ups are ratios within the same run "
        "(candidates alternated A B, B A, ...).",
        "",
        f"Suite wall time: {seconds / 60:.1f} min." if seconds else "",
        "",
    ]
    if note:
        lines += [note, ""]
    lines += [
        "| script | group | candidate | median | unc | GFLOP/s | % fp32 peak | % bf16 peak | speed-up | vs | extra |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    skip = {"group", "name", "median_s", "min_s", "uncontended", "repeats", "cpu_per_wall", "contended", "gflop",
            "gflops", "of_fp32_peak", "of_bf16_peak", "speedup", "baseline"}
    for result in results:
        for row in result["rows"]:
            extra = ", ".join(
                f"{k}={v:.0f}" if isinstance(v, float) and abs(v) >= 100 else f"{k}={v:.3g}" if isinstance(v, float)
                else f"{k}={v}" for k, v in row.items() if k not in skip
            )
            median = row["median_s"]
            median_text = "" if median != median else f"{median * 1000:.1f} ms" if median < 10 else f"{median:.2f} s"
            lines.append(
                f"| {result['script'].removeprefix('bench_')} | {row['group']} | {row['name']} | {median_text}"
                f"{' *contended*' if row.get('contended') else ''} | {row['uncontended']}/{row['repeats']} | "
                + (f"{row['gflops']:.0f} | {row['of_fp32_peak'] * 100:.0f}% | {row['of_bf16_peak'] * 100:.0f}% | "
                   if "gflops" in row and "of_fp32_peak" in row else " | | | ")
                + (f"{row['speedup']:.2f}x | {row['baseline']} | " if "speedup" in row else " | | ")
                + f"{extra} |"
            )
    notes = [note for result in results for note in result.get("notes", [])]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SCRIPTS)}")
    parser.add_argument("--output", default=None, help="Markdown file (default: benchmarks/results_<device>.md)")
    parser.add_argument("--note", default=None, help="a sentence for the results file (e.g. that the host was shared)")
    parser.add_argument("--render-only", action="store_true",
                        help="rebuild the Markdown from existing results/*.json without running anything")
    args = parser.parse_args(argv)
    scripts = args.only.split(",") if args.only else SCRIPTS
    start = time.perf_counter()
    results, failed = [], []
    device = args.device.split(":")[0]
    if args.render_only:
        results = [json.loads(path.read_text()) for name in scripts
                   if (path := HERE / "results" / f"bench_{name}.{device}.json").exists()]
        scripts = []
    for name in scripts:
        json_path = HERE / "results" / f"bench_{name}.{args.device.split(':')[0]}.json"
        command = [sys.executable, str(HERE / f"bench_{name}.py"), "--device", args.device, "--json", str(json_path)]
        if args.quick:
            command.append("--quick")
        print(f"\n### {' '.join(command[1:])}", flush=True)
        began = time.perf_counter()
        if subprocess.run(command, cwd=HERE.parent).returncode != 0:
            failed.append(name)
            continue
        print(f"### bench_{name}: {time.perf_counter() - began:.0f} s", flush=True)
        results.append(json.loads(json_path.read_text()))
    seconds = 0.0 if args.render_only else time.perf_counter() - start
    output = Path(args.output or HERE / f"results_{device}.md")
    output.write_text(markdown(results, device, seconds, args.note))
    (output.with_suffix(".json")).write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {output} and {output.with_suffix('.json')} ({seconds / 60:.1f} min)")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
