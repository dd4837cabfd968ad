"""Tables over several runs of one benchmark script, from the JSON files the runs wrote.

    python benchmarks/combine.py vs_tfmot A.json B.json ...
    python benchmarks/combine.py training_loop A.json B.json ...
    python benchmarks/combine.py epoch_end A.json B.json ...

Each cell lists the runs' values in the order given ("A / B / …"), computed from the raw
rounds in the JSON the same way the script computes its own table: medians over rounds, and
best rounds (each variant's fastest round) where the script reports them. BENCHMARKS.md's
multi-run tables are this script's output.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from typing import Any

SLOWED = 1.2  # as epoch_end.py: a round over 1.2× the variant's best counts as slowed down


def cells(runs: Sequence[Any], value: Callable[[Any], float], digits: int = 3) -> str:
    return " / ".join(f"{value(run):.{digits}f}" for run in runs)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def vs_tfmot(runs: list[dict[str, Any]]) -> str:
    def valid_tfmot(run):
        return [name for name, r in run["variants"].items()
                if name.startswith("tfmot") and r["status"] == "ok" and not r["problems"]]

    def fastest(run):
        return max(run["variants"][name]["median"] for name in valid_tfmot(run))

    def best_tfmot(run):
        return max(max(run["variants"][name]["rates"]) for name in valid_tfmot(run))

    names = [name for name in runs[0]["variants"]
             if all(name in run["variants"] and run["variants"][name]["status"] == "ok" for run in runs)]
    rows = []
    for name in names:
        def of(run, name=name):
            return run["variants"][name]

        rows.append([name, cells(runs, lambda run: of(run)["median"], 1),
                     cells(runs, lambda run: max(of(run)["rates"]), 1),
                     cells(runs, lambda run: of(run)["median"] / fastest(run), 2),
                     cells(runs, lambda run: max(of(run)["rates"]) / best_tfmot(run), 2),
                     cells(runs, lambda run: of(run)["cpu_ms_per_step"], 2)])
    fastest_names = " / ".join(run["fastest_tfmot"] for run in runs)
    return (f"Fastest tfmot setting by median: {fastest_names}\n\n"
            + table(["variant", "median steps/s", "best round steps/s", "÷ fastest tfmot (medians)",
                     "best ÷ tfmot's best", "CPU ms/step"], rows))


def training_loop(runs: list[dict[str, Any]]) -> str:
    def rate(run, name):  # median steps/s
        return run["steps"] / statistics.median(run["seconds"][name])

    def best(run, name):  # steps/s of the fastest round
        return run["steps"] / min(run["seconds"][name])

    def paired(run, name):  # as training_loop.paired_ratio: the median of the per-round ratios to static
        return statistics.median(b / s for s, b in zip(run["seconds"][name], run["seconds"]["static"]))

    def in_every_run(name):
        return all(name in run["seconds"] for run in runs)

    algorithms = [n for n in runs[0]["sparsity"] if " " not in n and in_every_run(n)]
    k = runs[0]["steps_per_execution"]
    plain = ("plain dense loop", "plain dense loop + NaN watch")
    references = [n for n in (*plain, "keras fit dense") if in_every_run(n)]
    out = []
    rows = [[name, cells(runs, lambda run, n=name: rate(run, n), 1),
             cells(runs, lambda run, n=name: rate(run, n) / rate(run, "static")),
             cells(runs, lambda run, n=name: paired(run, n)),
             cells(runs, lambda run, n=name: best(run, n) / best(run, "static"))]
            for name in [*algorithms, *references]]
    out.append("(1) one step a call, XLA on, ÷ static sparse\n\n"
               + table(["algorithm", "median steps/s", "÷ static (medians)", "÷ static (median of round ratios)",
                        "÷ static (best rounds)"], rows))
    if all(in_every_run(f"{n} no-xla") for n in algorithms):
        rows = [[name, cells(runs, lambda run, n=name: rate(run, n) / rate(run, f"{n} no-xla"))]
                for name in algorithms]
        out.append("(2) XLA on ÷ off, one step a call (medians)\n\n" + table(["algorithm", "on ÷ off"], rows))

    def faster_plain(run, pick):
        return max(pick(run, n) for n in plain)

    if all(in_every_run(f"{n} K={k}") for n in algorithms) and all(in_every_run(n) for n in plain):
        rows = [[name, cells(runs, lambda run, n=name: rate(run, f"{n} K={k}"), 1),
                 cells(runs, lambda run, n=name: rate(run, f"{n} K={k}") / rate(run, n)),
                 cells(runs, lambda run, n=name: rate(run, f"{n} K={k}") / faster_plain(run, rate)),
                 cells(runs, lambda run, n=name: best(run, f"{n} K={k}") / faster_plain(run, best)),
                 cells(runs, lambda run, n=name: rate(run, f"{n} K={k}") / rate(run, "plain dense loop"))]
                for name in algorithms]
        out.append(f"(3) {k} steps a call\n\n" + table(
            ["algorithm", f"median steps/s, {k} a call", "÷ 1 a call", "÷ faster plain loop (medians)",
             "÷ faster plain loop (best rounds)", "÷ bare plain loop (medians)"], rows))
    return "\n\n".join(out)


def epoch_end(runs: list[dict[str, Any]]) -> str:
    variants = list(dict.fromkeys(name.rsplit(" ", 1)[0] for name in runs[0]["seconds"]))
    rows = []
    for variant in variants:
        for setting in ("on", "off"):
            name = f"{variant} {setting}"

            def slowed(run, name=name):
                values = run["seconds"][name]
                return sum(v > SLOWED * min(values) for v in values)

            rows.append([variant, setting,
                         cells(runs, lambda run, n=name: 1000 * statistics.median(run["seconds"][n]), 1),
                         cells(runs, lambda run, n=name: 1000 * min(run["seconds"][n]), 1),
                         " / ".join(f"{slowed(run)} of {len(run['seconds'][name])}" for run in runs),
                         cells(runs, lambda run, n=name: sum(run["seconds"][n]), 2)])
    out = table(["variant", "autotune", "median epoch ms", "best epoch ms", "epochs over 1.2× best", "total s"], rows)
    if all(run.get("teardown_seconds") for run in runs):
        rows = [[setting, cells(runs, lambda run, s=setting: 1000 * statistics.median(run["teardown_seconds"][s]), 2),
                 cells(runs, lambda run, s=setting: 1000 * max(run["teardown_seconds"][s]), 1),
                 " / ".join(f"{sum(v > 0.005 for v in run['teardown_seconds'][setting])} of "
                            f"{len(run['teardown_seconds'][setting])}" for run in runs)]
                for setting in runs[0]["teardown_seconds"]]
        out += "\n\nDestroying the plain loop's iterator\n\n" + table(
            ["autotune", "median ms", "max ms", "epochs over 5 ms"], rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", choices=["vs_tfmot", "training_loop", "epoch_end"])
    parser.add_argument("runs", nargs="+", help="JSON files written by that script, in column order")
    args = parser.parse_args()
    runs = []
    for path in args.runs:
        with open(path) as f:
            runs.append(json.load(f))
    print({"vs_tfmot": vs_tfmot, "training_loop": training_loop, "epoch_end": epoch_end}[args.script](runs))


if __name__ == "__main__":
    main()
