"""Running a study's grid of independent cells, resumably, on one machine or across many.

Each cell is a small dict of JSON values (algorithm, sparsity, seed, …). Its result is written
to ``<logdir>/cells/<cell id>.json`` the moment it ends, so a grid that is stopped and rerun
into the same logdir redoes at most the cells that were running, and a grid's cells may run
anywhere that writes into the same logdir. An executor says where they run:

- ``Local(jobs)``: in this process (``jobs=1``) or in ``jobs`` fresh processes (``--jobs``);
  with ``jobs=1``, once this process holds half of its memory maps (XLA keeps every compiled
  program mapped, and a long grid in one process dies of it), the rest one by one in fresh
  processes;
- ``OneCell(k)``: cell ``k`` alone, in this process (``--cell=K``);
- ``ListCells(program)``: runs nothing and prints one self-contained ``--cell=K`` command per
  cell still to do (``--list_cells``), for a Slurm job array, GNU parallel or any scheduler;
- ``Ray(address, cpus_per_cell, gpus_per_cell)``: each cell a Ray task (``--executor=ray``);
- ``Assemble()``: runs nothing; the study's tables come from the cells done so far
  (``--assemble``).

Every executor runs a cell through ``execute`` (in this process, or in a worker process that
captures the cell's output) and stores what it gave through ``record``, in the process that
drives the grid: the result, the output as ``cells/<cell id>.log`` (a cell run in this process
prints to the console, and only a failure's traceback is kept), the cell's wall time and host.
A cell that fails is reported by name with its log, the other cells still run, and the grid
then stops with an error; bad input (a ``ConfigError``) stops it at once. The study writes its
tables when every cell is done: the run that finishes the last cell writes them, whichever
executor ran it. Every file is written atomically under a temporary name unique to its
writer, so processes on several machines writing into one logdir never corrupt each other's
files; a cell run twice at once is only done twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import multiprocessing
import os
import re
import shlex
import socket
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import gin

from keras_sparse import files
from keras_sparse.errors import ConfigError, KerasSparseError, TrainingInterrupted

Cell = Mapping[str, Any]
CellFunction = Callable[[Cell], Any]
Log = Callable[[str], None]

LOG_TAIL_LINES = 15  # of a failed cell's log, printed with its name
# Share of the process's memory-map limit (vm.max_map_count) past which Local(jobs=1) runs the
# rest in fresh processes: XLA maps each compiled program and never unmaps it, and at the limit
# LLVM fails ("Cannot allocate memory") and the process dies: a reinit grid of the MNIST-1D MLP
# (five trainings a cell, about 1,200 maps) died in its 52nd cell. Half the default 65,530 leaves
# room for the cell that crosses the line.
MAP_SHARE = 0.5
RAY_EXTRA = "pip install -e '.[ray]' in a checkout, or pip install 'ray==2.60.0'"


class GridStopped(Exception):
    """The grid stops without its tables, as asked (``--list_cells``, or ``--cell=K`` while other
    cells are still to do): not an error. The message says what was done and what comes next."""


class GridError(KerasSparseError):
    """Cells failed; the others are stored, and rerunning the grid runs only the cells not done."""


def cell_id(cell: Cell) -> str:
    """A file-name-safe id such as ``algorithm=rigl,sparsity=0.9,seed=0``."""
    text = ",".join(f"{key}={value}" for key, value in cell.items())
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)


def result_path(logdir: str, cell: Cell) -> str:
    """Where ``cell``'s result is stored: ``<logdir>/cells/<cell id>.json``."""
    return os.path.join(logdir, "cells", cell_id(cell) + ".json")


def log_path(logdir: str, cell: Cell) -> str:
    """Where ``cell``'s output is kept: ``<logdir>/cells/<cell id>.log``."""
    return os.path.join(logdir, "cells", cell_id(cell) + ".log")


def finished(cells: Sequence[Cell], results: Sequence[Any]) -> list[tuple[Cell, Any]]:
    """``(cell, result)`` for each cell done, in ``cells`` order (``Assemble`` returns ``None`` for the others)."""
    return [(cell, result) for cell, result in zip(cells, results) if result is not None]


def missing(cells: Sequence[Cell], results: Sequence[Any]) -> list[str]:
    """The ids of the cells whose result is ``None``: not done yet (only ``Assemble`` returns such)."""
    return [cell_id(cell) for cell, result in zip(cells, results) if result is None]


# Running one cell, and storing what it gave: the one code path of every executor.

@dataclasses.dataclass
class Outcome:
    """What running one cell gave: its result, or its error (one line) and whether that error is
    bad input (``fatal``: the grid stops); its output (``log``) where it was captured, else a
    failure's traceback; its wall time and host."""

    index: int
    result: Any = None
    error: str | None = None
    fatal: bool = False
    log: str | None = None
    seconds: float = 0.0
    host: str = ""


def execute(function: CellFunction, index: int, cell: Cell, capture: bool = False) -> Outcome:
    """Runs ``function(cell)``. With ``capture`` the cell's output (Python's and TensorFlow's,
    file descriptors 1 and 2) goes to the outcome's ``log`` instead of the console; a failure's
    traceback is printed (into that log when captured). A Ctrl-C or a stop signal is not a
    failure of the cell: it stops the grid."""
    start = time.perf_counter()
    error = trace = result = None
    fatal = False
    with (_Capture() if capture else contextlib.nullcontext()) as captured:
        try:
            result = function(cell)
        except TrainingInterrupted:
            raise
        except Exception as exception:  # a failure of this cell; the grid goes on
            error, fatal = _one_line(exception), isinstance(exception, ConfigError)
            trace = traceback.format_exc()
            print(trace, file=sys.stderr, flush=True)
    return Outcome(index, result, error, fatal, captured.text if capture else trace,
                   time.perf_counter() - start, socket.gethostname())


def record(logdir: str, cell: Cell, outcome: Outcome) -> None:
    """Stores an outcome: the log (when there is one; a stale log of an earlier failure goes),
    then the result with the cell's wall time (``seconds``), host, and when it was stored
    (``finished``, a ``time.time()``). Both writes are atomic."""
    path = log_path(logdir, cell)
    if outcome.log is not None:
        files.write_text(path, outcome.log)
    elif os.path.exists(path):
        with contextlib.suppress(OSError):
            os.remove(path)
    if outcome.error is None:
        files.write_json(result_path(logdir, cell), {"cell": dict(cell), "result": outcome.result,
                                                     "seconds": round(outcome.seconds, 3), "host": outcome.host,
                                                     "finished": time.time()},
                         indent=1)


def stored_time(logdir: str, cell: Cell) -> dict[str, Any] | None:
    """``{"seconds", "host", "finished"}`` as stored when ``cell`` ran (``finished`` is absent
    from results stored before it was recorded); ``None`` if the cell is not done. A rerun that
    skips the cell reports these, the time it took when it ran."""
    path = result_path(logdir, cell)
    if not os.path.exists(path):
        return None
    stored = files.read_json(path)
    return {key: stored.get(key) for key in ("seconds", "host", "finished") if key in stored}


class _Capture:
    """Points file descriptors 1 and 2 at a temporary file for the block; ``text`` is what was written."""

    text = ""

    def __enter__(self) -> "_Capture":
        sys.stdout.flush()
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = [os.dup(1), os.dup(2)]
        for fd in (1, 2):
            os.dup2(self._file.fileno(), fd)
        return self

    def __exit__(self, *exc_info) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved):
            os.dup2(saved, fd)
            os.close(saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()


def _one_line(exception: BaseException) -> str:
    lines = str(exception).strip().splitlines()
    return f"{type(exception).__name__}: {lines[0]}" if lines else type(exception).__name__


def _init_worker(gin_config: str, module: str) -> None:
    """Sets up a fresh worker process: the driver's gin configuration, the study's module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Cells sharing a GPU (Ray's fractional gpus_per_cell, --jobs on one GPU) each take memory
    # as they need it, not all of it at start.
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    importlib.import_module(module)  # registers the configurables the config names
    gin.clear_config()
    gin.parse_config(gin_config)


def _execute_captured(job: tuple[CellFunction, int, Cell]) -> Outcome:
    return execute(*job, capture=True)


def _module(function: CellFunction) -> str:
    return getattr(function, "func", function).__module__


# The grid and its executors.

@dataclasses.dataclass
class Grid:
    """A grid being run: its cells, the results stored so far (by index), and where it logs."""

    logdir: str
    cells: Sequence[Cell]
    function: CellFunction
    log: Log
    results: dict[int, Any] = dataclasses.field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [cell_id(cell) for cell in self.cells]

    @property
    def pending(self) -> list[int]:
        return [i for i in range(len(self.cells)) if i not in self.results]

    def load(self) -> None:
        """Reads the stored result of every cell not yet known to be done (others may have
        finished meanwhile, in other processes or on other machines)."""
        for i in self.pending:
            path = result_path(self.logdir, self.cells[i])
            if os.path.exists(path):
                self.results[i] = files.read_json(path)["result"]

    def in_order(self) -> list[Any]:
        """Every result in ``cells`` order, ``None`` for a cell not done."""
        return [self.results.get(i) for i in range(len(self.cells))]

    def run(self, outcomes: Iterable[Outcome], total: int) -> None:
        """Records each of the ``total`` outcomes as it arrives and reports it; a failure is named
        with its log and the rest still run; bad input stops at once. Raises ``GridError`` if any
        failed."""
        failed = []
        for n, outcome in enumerate(outcomes, 1):
            cell = self.cells[outcome.index]
            name = cell_id(cell)
            if outcome.fatal:
                raise ConfigError(f"cell {name}: {outcome.error.split(': ', 1)[-1]}")
            record(self.logdir, cell, outcome)
            if outcome.error is None:
                self.results[outcome.index] = outcome.result
                self.log(f"[{n}/{total}] done: {name} ({outcome.seconds:.1f} s)")
                continue
            failed.append(name)
            where = log_path(self.logdir, cell) if outcome.log is not None else "none kept"
            tail = (outcome.log or "").rstrip().splitlines()[-LOG_TAIL_LINES:]
            self.log("\n".join([f"[{n}/{total}] FAILED: {name}: {outcome.error} (log: {where}); its last lines:",
                                *(f"    {line}" for line in tail)]))
        if failed:
            raise GridError(f"{len(failed)} of {total} cells failed: {', '.join(failed)}; each one's log is "
                            f"{os.path.join(self.logdir, 'cells', '<cell id>.log')}. The other cells are stored: "
                            "rerunning the same command runs only the cells not done.")


class Local:
    """The cells in this process (``jobs=1``) or in ``jobs`` fresh spawned processes, each with its
    own TensorFlow and the driver's gin configuration; a worker's output goes to the cell's log."""

    def __init__(self, jobs: int = 1):
        self.jobs = jobs

    def run(self, grid: Grid) -> list[Any]:
        pending = grid.pending
        grid.log(f"{len(grid.cells) - len(pending)} of {len(grid.cells)} cells already done; running "
                 f"{len(pending)} with {self.jobs} job(s).")
        if self.jobs <= 1 or len(pending) <= 1:
            grid.run(self._here_while_maps_last(grid, pending), len(pending))
        else:
            grid.run(_in_fresh_processes(grid, pending, self.jobs), len(pending))
        return grid.in_order()

    @staticmethod
    def _here_while_maps_last(grid: Grid, pending: list[int]) -> Iterator[Outcome]:
        for n, index in enumerate(pending):
            used, limit = memory_maps()
            if n and used > MAP_SHARE * limit:
                grid.log(f"This process holds {used} of its {limit} memory maps (XLA keeps its compiled programs "
                         f"mapped): the {len(pending) - n} cells left run one by one in fresh processes.")
                yield from _in_fresh_processes(grid, pending[n:], 1)
                return
            yield execute(grid.function, index, grid.cells[index])


def memory_maps() -> tuple[int, int]:
    """This process's memory maps and their limit (Linux's /proc); (0, 1) where unknown."""
    try:
        with open("/proc/self/maps") as maps, open("/proc/sys/vm/max_map_count") as limit:
            return sum(1 for _ in maps), int(limit.read())
    except (OSError, ValueError):
        return 0, 1


def _in_fresh_processes(grid: Grid, pending: Sequence[int], jobs: int) -> Iterator[Outcome]:
    """The cells in ``jobs`` spawned processes, a fresh one per cell, each with the driver's gin
    configuration; a worker's output goes to the cell's log."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=_init_worker, initargs=(gin.config_str(), _module(grid.function)),
                      maxtasksperchild=1) as pool:
        yield from pool.imap_unordered(_execute_captured, [(grid.function, i, grid.cells[i]) for i in pending])


class OneCell:
    """Cell ``index`` (its position in the grid) alone, in this process; its output goes to the
    console (a scheduler's log). The run that finds every cell done returns all results, so the
    study writes its tables; otherwise ``GridStopped`` says how many are left."""

    def __init__(self, index: int):
        self.index = index

    def run(self, grid: Grid) -> list[Any]:
        n = len(grid.cells)
        if not 0 <= self.index < n:
            raise ConfigError(f"--cell={self.index}: this grid has {n} cells, numbered 0 to {n - 1} "
                              "(--list_cells prints their commands).")
        name = cell_id(grid.cells[self.index])
        if self.index in grid.results:
            grid.log(f"Cell {self.index} of {n} ({name}) is already done.")
        else:
            grid.log(f"Running cell {self.index} of {n}: {name}.")
            grid.run([execute(grid.function, self.index, grid.cells[self.index])], 1)
            grid.load()  # the cells that finished elsewhere while this one ran
        left = len(grid.pending)
        if left:
            raise GridStopped(f"{n - left} of {n} cells done, {left} to go: the run that finishes the last one writes "
                              "the study's tables (--assemble writes them now from the cells done).")
        grid.log(f"All {n} cells are done: writing the study's tables.")
        return grid.in_order()


class ListCells:
    """Runs nothing: writes the gin configuration to ``<logdir>/grid-<hash>.gin`` and prints, one a
    line, the command that runs each cell still to do: ``PROGRAM --gin_config=<that file>
    --logdir=<logdir> --cell=K``, with absolute paths. ``program`` is how this study was started
    (``[python, /path/binaries/reinit_study.py]`` or ``[/path/keras-sparse-study, reinit]``)."""

    def __init__(self, program: Sequence[str], out: Log = print):
        self.program = list(program)
        self.out = out

    def run(self, grid: Grid) -> list[Any]:
        config = gin.config_str()
        logdir = os.path.abspath(grid.logdir)
        # Named by its content: listing another configuration into the same logdir never
        # changes the file that commands listed before still read.
        path = os.path.join(logdir, f"grid-{hashlib.sha256(config.encode()).hexdigest()[:12]}.gin")
        if not os.path.exists(path):
            files.write_text(path, config)
        pending = grid.pending
        try:
            for index in pending:
                self.out(shlex.join([*self.program, f"--gin_config={path}", f"--logdir={logdir}", f"--cell={index}"]))
            sys.stdout.flush()
        except BrokenPipeError:  # whatever read the commands (GNU parallel, head) stopped reading
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            raise ConfigError("The program reading the listed commands stopped before the end (a closed pipe): "
                              "see its own error above.") from None
        raise GridStopped(f"{len(pending)} of {len(grid.cells)} cells to run ({len(grid.cells) - len(pending)} done), "
                          f"one command a line; each writes into {logdir}, and the one that finishes the last cell "
                          "writes the study's tables.")


class Ray:
    """Each cell a Ray task requesting ``cpus_per_cell`` CPUs and ``gpus_per_cell`` GPUs (a
    fraction shares a GPU), run in a worker process with the driver's gin configuration (a fresh
    one for a GPU task); its output comes back to the cell's log. ``address`` is ``ray.init``'s: None joins the
    cluster that ``RAY_ADDRESS`` or a running ``ray start`` names, else starts one on this
    machine; ``"auto"``, ``HOST:PORT`` or ``ray://HOST:10001`` name a cluster. The results are
    written by this process, so only it needs the logdir. A worker that dies (killed, out of
    memory) fails its cell; Ray does not retry it."""

    def __init__(self, address: str | None = None, cpus_per_cell: float = 1, gpus_per_cell: float = 0):
        if cpus_per_cell < 0 or gpus_per_cell < 0:
            raise ConfigError("--cpus_per_cell and --gpus_per_cell are counts of a cell's CPUs and GPUs: "
                              "give 0 or more.")
        self.address, self.cpus_per_cell, self.gpus_per_cell = address, cpus_per_cell, gpus_per_cell

    def run(self, grid: Grid) -> list[Any]:
        try:
            import ray
        except ImportError:
            raise ConfigError(f"The Ray executor needs Ray, an optional extra: {RAY_EXTRA}.") from None
        pending = grid.pending
        grid.log(f"{len(grid.cells) - len(pending)} of {len(grid.cells)} cells already done; running {len(pending)} "
                 f"as Ray tasks of {self.cpus_per_cell:g} CPU and {self.gpus_per_cell:g} GPU each.")
        if not pending:
            return grid.in_order()
        started = not ray.is_initialized()
        if started:
            try:
                # Each cell's output goes to its log; the workers' own output stays in Ray's logs.
                ray.init(address=self.address, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as error:
                raise ConfigError(f"Cannot start or join Ray at {self.address or 'RAY_ADDRESS / a local cluster'} "
                                  f"({_one_line(error)}): check --ray_address.") from None
        refs: dict[Any, int] = {}
        try:
            have = ray.cluster_resources()
            short = [f"{need:g} {name}" for name, need in (("CPU", self.cpus_per_cell), ("GPU", self.gpus_per_cell))
                     if need > have.get(name, 0)]
            if short:
                grid.log(f"Each cell asks for {' and '.join(short)}, more than Ray's cluster has now: the cells wait "
                         "for a node that has them to join (Ctrl-C stops).")
            # max_calls=1: a fresh worker process per cell, CPU tasks too (Ray reuses CPU workers by
            # default): a worker that ran cell after cell would run out of memory maps (MAP_SHARE), and
            # a GPU task's TensorFlow then sees only the GPUs Ray gave it.
            task = ray.remote(num_cpus=self.cpus_per_cell, num_gpus=self.gpus_per_cell, max_retries=0,
                              max_calls=1)(_ray_task)
            config, module, function = gin.config_str(), _module(grid.function), ray.put(grid.function)
            refs = {task.remote(config, module, function, i, grid.cells[i]): i for i in pending}
            grid.run(_ray_outcomes(ray, refs), len(refs))
        finally:
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            if started:
                ray.shutdown()
        return grid.in_order()


def _ray_task(gin_config: str, module: str, function: CellFunction, index: int, cell: Cell) -> Outcome:
    _init_worker(gin_config, module)
    return execute(function, index, cell, capture=True)


def _ray_outcomes(ray, refs: dict[Any, int]) -> Iterator[Outcome]:
    """Each task's outcome as it ends; ``refs`` keeps the ones still running (to cancel)."""
    while refs:
        (ref,), _ = ray.wait(list(refs), num_returns=1)
        index = refs.pop(ref)
        try:
            yield ray.get(ref)
        except ray.exceptions.RayError as error:  # the worker died: killed, out of memory, lost node
            yield Outcome(index, error=f"its Ray task died: {_one_line(error)} (the worker's own output is in Ray's "
                                       "logs on its node: /tmp/ray/session_latest/logs)", log=str(error))


class Assemble:
    """Runs nothing: the results of the cells done so far, ``None`` for the others, so the study
    writes its tables from what is there (and names what is missing)."""

    def run(self, grid: Grid) -> list[Any]:
        if not grid.results:
            raise ConfigError(f"No cell of this grid is done in {os.path.join(grid.logdir, 'cells')}: run some "
                              "first (--list_cells prints their commands).")
        left = grid.pending
        failed = [i for i in left if os.path.exists(log_path(grid.logdir, grid.cells[i]))]
        grid.log(f"Writing the study's tables from {len(grid.results)} of {len(grid.cells)} cells"
                 + (f"; not done: {', '.join(grid.ids[i] for i in left)}" if left else "")
                 + (f" ({len(failed)} of them failed last time: see their logs)" if failed else "") + ".")
        return grid.in_order()


Executor = Local | OneCell | ListCells | Ray | Assemble
_EXECUTOR: Executor | None = None


@contextlib.contextmanager
def using(executor: Executor | None) -> Iterator[None]:
    """``run_grid`` calls in the block run with ``executor`` (the study commands set it from their
    flags): ``with grid.using(grid.Ray(gpus_per_cell=1)): reinit.run(logdir)``."""
    global _EXECUTOR
    previous, _EXECUTOR = _EXECUTOR, executor
    try:
        yield
    finally:
        _EXECUTOR = previous


def run_grid(logdir: str, cells: Sequence[Cell], function: CellFunction, jobs: int = 1,
             log: Log | None = None, executor: Executor | None = None) -> list[Any]:
    """Runs ``function(cell)`` for every cell without a stored result; returns all results in
    ``cells`` order (``None`` for a cell not done, which only ``Assemble`` returns). The executor
    is ``executor``, else the one ``using`` set, else ``Local(jobs)``. ``function`` must be a
    module-level function or a ``functools.partial`` of one (worker processes unpickle it).
    ``log`` (default: print) gets the progress lines; ``ListCells`` prints them to stderr, its
    commands to stdout."""
    chosen = executor or _EXECUTOR or Local(jobs)
    if log is None:
        log = (lambda line: print(line, file=sys.stderr, flush=True)) if isinstance(chosen, ListCells) else print
    os.makedirs(os.path.join(logdir, "cells"), exist_ok=True)
    grid = Grid(logdir, list(cells), function, log)
    if len(set(grid.ids)) != len(grid.ids):
        raise ConfigError("The study grid has repeated cells: remove duplicate values from its lists.")
    grid.load()
    return chosen.run(grid)
