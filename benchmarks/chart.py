"""Render stop_latency.py's results as a PNG: stop() latency per client line, upstream vs shim.

    python benchmarks/chart.py [--json benchmarks/results/stop_latency.json] [--out PNG]

Needs matplotlib (``pip install "pyspark-safestop[bench]"``). One panel per condition
(healthy server, ReleaseExecute hung, ReleaseSession hung); per client line a bar for upstream
and one for the shim at the median, with a whisker to p99, on a log scale. A stop that never
returned is drawn up to the benchmark's cap, hatched, and labelled ``hung``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _common import RESULTS

#: Conditions drawn, as named in stop_latency.json, with their panel titles.
PANELS = {
    "healthy": "healthy server",
    "ReleaseExecute hung": "ReleaseExecute hung",
    "ReleaseSession hung (timeout 1 s)": "ReleaseSession hung\n(shim's release timeout 1 s)",
}
#: stop_latency.py's cap: a stop still running then is reported hung.
CAP = 15.0
COLOURS = {"upstream": "#c44e52", "shim": "#4c72b0"}


def percentile(seconds: list[float], q: float) -> float | None:
    """The same nearest-rank percentile stop_latency.py prints."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def label(value: float) -> str:
    """A bar's label."""
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1000:.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"
    return f"{value:.1f} s"


def render(results: dict[str, Any], out: Path, subtitle: str) -> None:
    """Draw the chart into ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    lines = list(results)
    panels = [name for name in PANELS if any(name in results[line] for line in lines)]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 4.6), sharey=True, squeeze=False
    )
    width = 0.38
    for ax, name in zip(axes[0], panels):
        for offset, mode in ((-width / 2, "upstream"), (width / 2, "shim")):
            for x, line in enumerate(lines):
                entry = results[line].get(name, {}).get(mode)
                if entry is None:
                    continue
                p50 = percentile(entry["seconds"], 0.5)
                p99 = percentile(entry["seconds"], 0.99)
                if p50 is None and entry["hung"]:
                    ax.bar(
                        x + offset,
                        CAP,
                        width,
                        color="white",
                        edgecolor=COLOURS[mode],
                        hatch="//",
                        label=None,
                    )
                    ax.text(x + offset, CAP * 1.15, "hung", ha="center", fontsize=7, rotation=90)
                    continue
                if p50 is None:
                    continue
                ax.bar(x + offset, p50, width, color=COLOURS[mode])
                if p99 is not None and p99 > p50:
                    ax.errorbar(
                        x + offset, p50, yerr=[[0], [p99 - p50]], fmt="none", ecolor="black"
                    )
                ax.text(
                    x + offset,
                    max(p50, p99 or p50) * 1.25,
                    label(p50),
                    ha="center",
                    fontsize=7,
                    rotation=90,
                )
        ax.set_title(PANELS[name], fontsize=10)
        ax.set_xticks(range(len(lines)))
        ax.set_xticklabels(lines)
        ax.set_xlabel("client line")
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 200)
        ax.axhline(CAP, color="grey", linestyle=":", linewidth=0.8)
        ax.grid(axis="y", which="major", alpha=0.3)
    axes[0][0].set_ylabel("stop() latency, seconds (median, whisker to p99)")
    handles = [
        Rectangle((0, 0), 1, 1, color=COLOURS["upstream"]),
        Rectangle((0, 0), 1, 1, color=COLOURS["shim"]),
        Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="//"),
    ]
    fig.legend(
        handles,
        ["upstream", "pyspark-safestop", f"never returned (drawn at the {CAP:.0f} s cap)"],
        loc="upper center",
        ncol=3,
        fontsize=9,
        frameon=False,
    )
    fig.suptitle(subtitle, y=0.02, fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 0.94))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def main() -> int:
    """Read the JSON, draw the PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=RESULTS / "stop_latency.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "stop_latency.png")
    parser.add_argument(
        "--subtitle",
        default="",
        help="text under the chart (default: the machine the figures were measured on)",
    )
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print('chart.py needs matplotlib: pip install "pyspark-safestop[bench]"', file=sys.stderr)
        return 2
    results = json.loads(args.json.read_text())
    subtitle = args.subtitle
    if not subtitle:
        from _common import describe_machine, machine

        subtitle = "stop() latency, Spark Connect server 4.3 on loopback; " + describe_machine(
            machine(), with_load=False
        )
    render(results, args.out, subtitle)
    print(f"chart: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
