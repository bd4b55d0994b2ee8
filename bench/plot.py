"""Run the fan-out and latency benchmarks across subscriber counts and plot both (PNG).

    python bench/plot.py [--out docs/performance.png]

Each point is one run of bench/fanout.py or bench/latency.py (their RESULT lines are parsed),
so the figure shows what those scripts print, on this machine, in this run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent


def result(script: str, *args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, check=True).stdout
    line = next(line for line in reversed(out.splitlines()) if line.startswith("RESULT "))
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "performance.png"))
    args = parser.parse_args()
    fan_counts = [10, 50, 100, 200]
    lat_counts = [1, 5, 10, 20]
    fan = [result("fanout.py", "--subscribers", str(n), "--rounds", "20") for n in fan_counts]
    lat = [result("latency.py", "--subscribers", str(n), "--seconds", "5") for n in lat_counts]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(fan_counts, [r["deliveries_per_s"] for r in fan], "o-", label="kling-relay worker")
    left.plot(fan_counts, [r["baseline_per_s"] for r in fan], "s--", label="raw aiohttp client")
    left.set(title="Fan-out: one event to N subscribers", xlabel="subscribers", ylabel="deliveries / s")
    left.legend()
    right.plot(lat_counts, [r["p50_ms"] for r in lat], "o-", label="p50")
    right.plot(lat_counts, [r["p99_ms"] for r in lat], "s--", label="p99")
    right.set(title="Callback → subscriber at 100 callbacks/s", xlabel="subscribers", ylabel="ms")
    right.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    for n, r in zip(fan_counts, fan, strict=True):
        print(f"fanout subscribers={n} deliveries_per_s={r['deliveries_per_s']:.0f} baseline_per_s={r['baseline_per_s']:.0f}")
    for n, r in zip(lat_counts, lat, strict=True):
        print(f"latency subscribers={n} p50_ms={r['p50_ms']:.1f} p99_ms={r['p99_ms']:.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
