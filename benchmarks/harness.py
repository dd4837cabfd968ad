"""The standard-library parts of the benchmarks: paired ratios over alternating rounds, markdown
tables over one or several runs, and worker processes that answer in JSON lines.

Nothing here imports TensorFlow: the processes that only coordinate workers
(``vs_tfmot.py``, ``loop_before_after.py``) must not load a Keras or a keras-sparse of their own.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO


def round_ratios(rates: Mapping[str, Sequence[float]], name: str, baseline: str) -> dict[str, Any]:
    """``name``'s rate ÷ ``baseline``'s in each round, with their median, min, max and quartiles.

    Both sides of a ratio are timed in the same round, so a slow stretch of a shared machine that
    covers the round slows both; a ratio of medians lets such a stretch fall on one side only.
    """
    return spread([a / b for a, b in zip(rates[name], rates[baseline])])


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and quartiles of ``values`` (kept as ``per_round``)."""
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"per_round": list(values), "median": statistics.median(values), "min": min(values), "max": max(values),
            "q1": quartiles[0], "q3": quartiles[2]}


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def cells(runs: Sequence[Any], value: Callable[[Any], Any], digits: int = 3) -> str:
    """One table cell over several runs: each run's value, in the order given ("A / B / …");
    numbers with ``digits`` decimals, anything else as it is."""
    def text(v):
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    return " / ".join(text(value(run)) for run in runs)


def ratio_cells(ratios: Sequence[Mapping[str, Any]], spread: str | None = None) -> str:
    """A cell of ``round_ratios`` results over runs: the median of per-round ratios, with
    ``spread`` "iqr" (quartiles) or "range" (min–max) in parentheses, or ``spread`` alone
    ("iqr only", "range only")."""
    def text(q):
        iqr, full = f"{q['q1']:.3f}–{q['q3']:.3f}", f"{q['min']:.3f}–{q['max']:.3f}"
        return {None: f"{q['median']:.3f}", "iqr": f"{q['median']:.3f} ({iqr})",
                "range": f"{q['median']:.3f} ({full})", "iqr only": iqr, "range only": full}[spread]

    return " / ".join(text(q) for q in ratios)


#: The help of every script's ``--combine`` (each script defines the option itself, so that its
#: source names every option its command lines in BENCHMARKS.md use).
COMBINE_HELP = ("print the tables over earlier runs' JSON files (--out), cells 'A / B / …' in the order given, and "
                "run nothing")


def load_runs(paths: Sequence[str]) -> list[Any]:
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    return runs


def write_json(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def gin_bindings(path: str) -> dict[str, Any]:
    """The literal bindings of a gin file and the files it includes (relative to its folder),
    later bindings overriding earlier ones: ``{"training.epochs": 60, "training.algorithm":
    "@RigL()", ...}``. Enough for the shipped configs' ``name.param = literal`` lines."""
    bindings: dict[str, Any] = {}
    with open(path) as f:
        lines = f.read().splitlines()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line.startswith("include "):
            bindings.update(gin_bindings(os.path.join(os.path.dirname(path), ast.literal_eval(line[8:].strip()))))
        elif "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            bindings[key] = value if value.startswith("@") else ast.literal_eval(value)
    return bindings


# ---------------------------------------------------------------------- in-process runs
def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages: how busy the shared machine was."""
    return [round(v, 2) for v in os.getloadavg()]


def calls_for(call: Callable[[], Any], seconds: float) -> int:
    """How many calls of ``call`` (its result waited for) take about ``seconds``, at least 3,
    from a short trial after one untimed call."""
    import numpy as np

    np.asarray(call())
    start, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - start < 0.05:
        np.asarray(call())
        n += 1
    return max(3, round(seconds / ((time.perf_counter() - start) / n)))


def add_latency_flags(parser: argparse.ArgumentParser, rounds: int, seconds: float, out: str) -> None:
    """The flags of a latency benchmark measured in this process (``run_in_process``):
    ``--batches``, ``--rounds``, ``--seconds`` (about how long a variant is timed a round),
    ``--out`` and ``--combine``."""
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--seconds", type=float, default=seconds, help="about how long a variant is timed per round")
    parser.add_argument("--out", default=out)
    parser.add_argument("--combine", nargs="+", metavar="JSON", help=COMBINE_HELP)


def run_in_process(script: str, args: argparse.Namespace, measure: Callable[[], dict[str, Any]],
                   report: Callable[[list[Any]], str], **settings: Any) -> None:
    """A benchmark measured in this process (flags: ``add_latency_flags``): with ``--combine``,
    ``report`` over those runs; otherwise ``measure()``'s results, with the command, the
    TensorFlow and Keras versions, the CPU count, ``settings`` and the load average before and
    after, written to ``--out`` (JSON) and printed through ``report``."""
    if args.combine:
        print(report(load_runs(args.combine)))
        return
    import keras
    import tensorflow as tf

    out = args.out
    started = time.perf_counter()
    run = {"command": f"python benchmarks/{os.path.basename(script)} " + " ".join(sys.argv[1:]),
           "load_before": load_average(), "tensorflow": tf.__version__, "keras": keras.__version__,
           "cpus": os.cpu_count(), **settings}
    run.update(measure())
    run["load_after"] = load_average()
    run["wall_seconds"] = time.perf_counter() - started
    write_json(out, run)
    print(report([run]))
    print(f"\n{out}")


# ------------------------------------------------------------------------- other revisions
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True, text=True).stdout.strip()


def extract(revision: str, into: str, paths: Sequence[str] = ("keras_sparse", "gin_configs")) -> dict[str, Any]:
    """``paths`` of ``revision`` (the library and its configs) under ``into``, by ``git archive``."""
    commit = git("rev-parse", "--verify", f"{revision}^{{commit}}")
    archive = subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", commit, *paths],
                             check=True, capture_output=True).stdout
    os.makedirs(into)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return {"revision": revision, "commit": commit, "path": into}


def working_tree() -> dict[str, Any]:
    """This working tree as ``extract`` describes a revision, with its uncommitted library files."""
    changed = git("status", "--porcelain", "--", "keras_sparse").splitlines()
    return {"revision": "working tree", "commit": git("rev-parse", "HEAD"), "path": ROOT,
            "uncommitted_library_files": len(changed)}


# ------------------------------------------------------------------------ worker processes
def common_cases(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cases of the first run that every run has, in the first run's order."""
    return [case for case in runs[0]["cases"] if all(case in run["cases"] for run in runs)]


def finish_run(run: dict[str, Any], out: str, started: float, problems_of: Callable[[dict[str, Any]], list[str]],
               summarize: Callable[[dict[str, Any]], None], report: Callable[[list[Any]], str], **extra: Any) -> None:
    """Adds the machine and the wall time to a measured ``run``, its problems and summary; prints
    its table and writes it to ``out`` (JSON)."""
    run.update(python=platform.python_version(), machine=platform.machine(), cpus=os.cpu_count(),
               wall_seconds=time.perf_counter() - started, **extra)
    run["problems"] = problems_of(run)
    summarize(run)
    print(report([run]))
    write_json(out, run)
    print(f"\n{out}; worker logs: {run['log_dir']} ({run['wall_seconds']:.0f} s)")


def add_worker_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """``--combine`` and the internal ``--worker NAME --worker-config JSON`` that a script with
    worker processes passes to itself (``worker_command``)."""
    parser.add_argument("--worker", choices=list(names) if names else None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-config", help=argparse.SUPPRESS)
    parser.add_argument("--combine", nargs="+", metavar="JSON", help=COMBINE_HELP)


def worker_command(script: str, name: str, config: Mapping[str, Any]) -> list[str]:
    """The command line that runs ``script`` as worker ``name`` with ``config``."""
    return [sys.executable, os.path.abspath(script), "--worker", name, "--worker-config", json.dumps(config)]


def ran_combine_or_worker(args: argparse.Namespace, report: Callable[[list[Any]], str],
                          worker: Callable[[str, dict[str, Any]], None]) -> bool:
    """Prints ``report`` over ``--combine``'s runs, or runs ``worker(name, config)`` for
    ``--worker``; whether either ran (then the script has nothing left to do)."""
    if args.combine:
        print(report(load_runs(args.combine)))
        return True
    if args.worker:
        worker(args.worker, json.loads(args.worker_config))
        return True
    return False


def json_lines_out() -> Callable[[dict[str, Any]], None]:
    """In a worker: returns ``emit(record)``, which writes one JSON line to the real stdout, and
    sends everything else written to stdout (TensorFlow's C++ logs included) to stderr, so that
    the coordinating process reads records only."""
    out: TextIO = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(record: dict[str, Any]) -> None:
        out.write(json.dumps(record) + "\n")
        out.flush()

    return emit


def failed_record(error: BaseException) -> dict[str, Any]:
    """The record a worker sends when its set-up fails: the error's type and first line."""
    lines = str(error).strip().splitlines() or [""]
    return {"status": "failed", "error": f"{type(error).__name__}: {lines[0]}"}


class Worker:
    """The coordinating process's handle on one worker process: ``command`` runs it, its stderr
    goes to ``log_path``; ``request(line)`` sends a line and returns the worker's next record."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], log_path: str):
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 (the worker's stderr, open as long as it runs)
        self.process = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, text=True, env=dict(env))

    def read(self) -> dict[str, Any]:
        """The worker's next JSON line; a dead worker reads as failed, with its log's last line."""
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            with open(self.log_path) as f:
                tail = [text.strip() for text in f.read().strip().splitlines()][-1:] or [""]
            return {"status": "failed", "error": f"worker exited with {self.process.returncode}: {tail[0]} "
                                                 f"(log: {self.log_path})"}
        return json.loads(line)

    def request(self, line: str) -> dict[str, Any]:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("stop\n")
                self.process.stdin.close()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()
