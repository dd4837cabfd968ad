"""The documentation runs: every ```python block of README.md and docs/*.md executes, and every
command line in them names a binary, console script or gin config that exists.

A block runs on its own (not after the blocks before it), in a fresh namespace holding only the
names the docs leave to the user:

- ``my_keras_model``: a small Keras 3 model for MNIST-1D-shaped inputs (40, 1) and 10 classes
  (Conv1D, Dense, Dense), fresh for every block; ``build_my_model()`` builds another one.
- ``train_ds`` / ``test_ds``: ``tf.data`` datasets of (x, y) batches of known length (4 and 2
  batches of 16, random data).
- ``model``: a wrapped model (``ks.wrap(build_my_model())``, half of each kernel pruned), the
  model that "… train with ks.Trainer …" leaves; ``x``: a batch of inputs for it;
  ``optimizer`` / ``loss``: a fresh SGD optimizer and a loss.

Imports (``keras``, ``tf``, ``ks``) are not provided: a block has those it makes itself and
those of the blocks above it in the same file (a reader goes on from there). Each block runs in
a temporary working directory, so relative paths ("sparse.keras", "logs") land there; absolute
``/tmp/...`` paths in the block's text are rewritten to that directory too. Blocks that use
tensorflow-model-optimization (the "before" code
of docs/migrating_from_tfmot.md) run in a child process with a ``tf_keras`` model under the same
names: importing tfmot switches ``tf.keras`` to Keras 2 in its process (see the brief's pitfalls).
"""

from __future__ import annotations

import ast
import configparser
import importlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sparse as ks

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)

INPUT_SHAPE, NUM_CLASSES, BATCH = (40, 1), 10, 16


def fenced_blocks(path: Path) -> list[tuple[str, str]]:
    """(info string, code) of every fenced block of a markdown file, in order."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(path.read_text())]


def python_blocks() -> list:
    """(file, index, code, imports of the blocks above it) for every python block."""
    cases = []
    for path in DOC_FILES:
        code_blocks = [code for info, code in fenced_blocks(path) if info.split(" ")[0] == "python"]
        for index, code in enumerate(code_blocks):
            name = path.relative_to(ROOT).as_posix()
            earlier = "".join(import_lines(block) for block in code_blocks[:index])
            cases.append(pytest.param(name, index, code, earlier, id=f"{name}-{index}"))
    return cases


def import_lines(code: str) -> str:
    """The top-level import statements of a block, as source; none from a tfmot block, whose
    imports belong to the tf_keras world of its child process."""
    if uses_tfmot(code):
        return ""
    return "".join(ast.get_source_segment(code, node) + "\n" for node in ast.parse(code).body
                   if isinstance(node, (ast.Import, ast.ImportFrom)))


def uses_tfmot(code: str) -> bool:
    return "tensorflow_model_optimization" in code


def adapt(code: str, tmp_path: Path) -> str:
    """The block's text as the test runs it: every ``epochs=N`` becomes ``epochs=1`` (the test
    checks that the code runs, not what it learns), and absolute /tmp paths point into tmp_path."""
    code = re.sub(r"\bepochs=\d+", "epochs=1", code)
    return re.sub(r"""(["'])/tmp/""", lambda m: f"{m.group(1)}{tmp_path.as_posix()}/", code)


# ------------------------------------------------------------ user-side names
def build_my_model() -> keras.Model:
    return keras.Sequential([
        keras.Input(INPUT_SHAPE),
        keras.layers.Conv1D(4, 5, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu", name="hidden"),
        keras.layers.Dense(NUM_CLASSES, name="logits"),
    ], name="my_model")


def arrays(batches: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batches * BATCH, *INPUT_SHAPE)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=batches * BATCH).astype("int64")
    return x, y


def dataset(batches: int, seed: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(arrays(batches, seed)).batch(BATCH)


def user_namespace() -> dict:
    keras.utils.set_random_seed(0)
    model = ks.wrap(build_my_model())
    rng = np.random.default_rng(1)
    ks.set_masks(model, {key: rng.random(mask.shape) < 0.5 for key, mask in ks.get_masks(model).items()})
    return {
        "__name__": "__doc_snippet__",
        "my_keras_model": build_my_model(),
        "build_my_model": build_my_model,
        "train_ds": dataset(4, seed=0),
        "test_ds": dataset(2, seed=1),
        "model": model,
        "x": tf.constant(arrays(1, seed=2)[0]),
        "optimizer": keras.optimizers.SGD(0.05, momentum=0.9),
        "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    }


# The same names for the tfmot blocks, with tf_keras (Keras 2), in a child process.
TF_KERAS_PRELUDE = textwrap.dedent(f"""
    import numpy as np, tensorflow as tf, tf_keras
    tf_keras.utils.set_random_seed(0)
    def build_my_model():
        return tf_keras.Sequential([
            tf_keras.Input({INPUT_SHAPE}),
            tf_keras.layers.Conv1D(4, 5, activation="relu", name="conv"),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(16, activation="relu", name="hidden"),
            tf_keras.layers.Dense({NUM_CLASSES}, name="logits"),
        ], name="my_model")
    def dataset(batches, seed):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(batches * {BATCH}, *{INPUT_SHAPE})).astype("float32")
        y = rng.integers(0, {NUM_CLASSES}, size=batches * {BATCH}).astype("int64")
        return tf.data.Dataset.from_tensor_slices((x, y)).batch({BATCH})
    my_keras_model = build_my_model()
    train_ds, test_ds = dataset(4, seed=0), dataset(2, seed=1)
    del np, tf, tf_keras, dataset
""")


def tfmot_block(code: str):
    """A run (see BACKGROUND) of a tfmot block, with its earlier imports: in a child process, with
    tf_keras, in the run's directory."""
    def run(directory):
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        return subprocess.run([sys.executable, "-c", TF_KERAS_PRELUDE + adapt(code, directory)], cwd=directory,
                              env=env, capture_output=True, text=True, timeout=300)
    return run


def run_name(doc: str, index: int) -> str:
    """A block's name as a background run (the name of its directory, so without a slash)."""
    return f"{doc.replace('/', '_')}-{index}"


# conftest.BackgroundRuns starts the tfmot blocks' child processes when the session starts, beside
# the in-process tests.
BACKGROUND = {"test_python_block_runs": {run_name(doc, index): tfmot_block(earlier_imports + code)
                                         for doc, index, code, earlier_imports in (p.values for p in python_blocks())
                                         if uses_tfmot(code)}}


@pytest.mark.parametrize("doc, index, code, earlier_imports", python_blocks())
def test_python_block_runs(doc, index, code, earlier_imports, tmp_path, monkeypatch, background):
    if uses_tfmot(code):
        _, done = background.result(__name__, run_name(doc, index))
        assert done.returncode == 0, f"{doc}, python block {index} (tfmot, in a child process):\n{done.stderr[-3000:]}"
        return
    monkeypatch.chdir(tmp_path)
    namespace = user_namespace()
    exec(compile(earlier_imports + adapt(code, tmp_path), f"<{doc}, python block {index}>", "exec"), namespace)


def test_docs_have_python_blocks():
    names = {param.values[0] for param in python_blocks()}
    assert {"README.md", "docs/deployment.md", "docs/distributed.md", "docs/migrating_from_tfmot.md"} <= names


# ------------------------------------------------------------ command lines
def console_scripts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=", 1)) for line in lines)


def command_lines(paths: list[Path] = DOC_FILES) -> list[tuple[str, str]]:
    """(file, line) of every line of the non-python fenced blocks and of every inline `code`
    span that runs ``python …py`` or a ``keras-sparse-*`` command."""
    found = []
    for path in paths:
        text = path.read_text()
        snippets = [code for info, code in fenced_blocks(path) if info.split(" ")[0] != "python"]
        snippets += re.findall(r"(?<!`)`([^`\n]+)`(?!`)", FENCE.sub("", text))
        for snippet in snippets:
            for line in snippet.splitlines():
                if re.search(r"\bpython \S+\.py\b|(?<![\w/.-])keras-sparse-\w", line):
                    found.append((path.relative_to(ROOT).as_posix(), line.strip()))
    return found


def test_command_lines_name_existing_programs():
    lines = command_lines()
    scripts = console_scripts()
    seen_scripts, seen_files = set(), set()
    problems = []
    for doc, line in lines:
        for script in re.findall(r"\bpython (\S+\.py)\b", line):
            seen_files.add(script)
            if not (ROOT / script).is_file():
                problems.append(f"{doc}: `{line}` runs {script}, which does not exist")
        for name in re.findall(r"(?<![\w/.-])(keras-sparse-[\w-]+)", line):
            seen_scripts.add(name)
            if name not in scripts:
                problems.append(f"{doc}: `{line}` runs {name}, not a console script in setup.cfg ({sorted(scripts)})")
        # Config files named literally (not through a shell variable or a {a,b} pattern).
        for config in re.findall(r"--gin_config=([^\s'\"]+)", line):
            if not set("${*") & set(config) and not (ROOT / config).is_file():
                problems.append(f"{doc}: `{line}` names {config}, which does not exist")
    assert not problems, "\n".join(problems)
    assert "binaries/train.py" in seen_files  # the scan found the command lines at all


def test_benchmark_command_lines_use_existing_options():
    """BENCHMARKS.md and the docs print the commands their figures came from: each names a
    benchmark script that exists, and each of its ``--options`` is one the script defines."""
    lines = [(doc, line) for doc, line in command_lines([*DOC_FILES, ROOT / "BENCHMARKS.md"])
             if "python benchmarks/" in line]
    problems = []
    for doc, line in lines:
        for script, arguments in re.findall(r"\bpython (benchmarks/\S+\.py)([^|;&#]*)", line):
            if not (ROOT / script).is_file():
                problems.append(f"{doc}: `{line}` runs {script}, which does not exist")
                continue
            source = (ROOT / script).read_text()
            if re.search(r"harness\.add_\w+_flags\(", source):  # flags that harness defines for the script
                source += (ROOT / "benchmarks" / "harness.py").read_text()
            problems += [f"{doc}: `{line}` passes {option}, which {script} does not define"
                         for option in re.findall(r"(?<!\S)(--[\w-]+)", arguments) if f'"{option}"' not in source]
    assert not problems, "\n".join(problems)
    assert len(lines) > 10  # the scan found BENCHMARKS.md's commands at all


def test_console_scripts_point_at_functions():
    for name, target in console_scripts().items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
