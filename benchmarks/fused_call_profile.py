"""Where a fused ``model.fit`` call's time goes (``ks.fuse_steps``), LeNet-300-100, static 90%.

    python benchmarks/fused_call_profile.py [--steps-per-execution 20] [--rounds 7] [--calls 15]

One process: a model compiled with a ``SparseOptimizer`` (XLA, ``steps_per_execution`` K), fused by
``ks.SparsityCallback``, one epoch trained. Then each round times ``--calls`` calls of every part
below, one after another (ms a call, medians over rounds):

- ``train_function``: the whole fused call on an iterator of the data (the K batches that its
  background thread pulled and stacked during the last call, run);
- ``XLA program only``: the K-step XLA program on K batches stacked beforehand, called as the train
  function calls it (its concrete function), and called as a ``tf.function``;
- ``pull + stack, then the XLA program``: both on the call's path, one after the other (what the
  call would cost without its background thread);
- ``pull + stack``: K ``get_next_as_optional`` and the stack, in a graph function, no training;
- ``pull only``: the K pulls without the stack;
- ``the train function's own pull``: what the background thread runs (the above, plus whether
  the chunk is whole and stacks, and the K optionals for a chunk that does not);
- ``from a background pipeline``: the XLA program on stacks that a ``tf.data`` pipeline pulls from
  the iterator and stacks in its own thread (``map`` + ``prefetch``), the Trainer's way of
  getting its stacks. Building that pipeline for a new iterator is timed apart, as ``fit`` makes a
  new iterator every epoch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import common
import tensorflow as tf

import keras_sparse as ks


def timed(call, calls: int) -> float:
    """ms a call of ``call`` over ``calls`` calls, after one untimed call."""
    call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps-per-execution", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args()
    k = args.steps_per_execution

    model = common.lenet_300_100()
    optimizer = ks.SparseOptimizer(common.sgd(), ks.algorithms.StaticSparse(sparsity=common.SPARSITY), model=model)
    model.compile(optimizer=optimizer, loss=common.loss_fn(), jit_compile=True, steps_per_execution=k)
    data = common.dataset((28, 28, 1), 300, 128)
    model.fit(data, epochs=1, verbose=0, callbacks=[ks.SparsityCallback()])
    program = model.train_function
    iterator = iter(data.repeat())

    def pull(source):
        values = [source.get_next_as_optional().get_value() for _ in range(k)]
        return tf.nest.map_structure(lambda *parts: tf.stack(parts), *values)

    pull_and_stack = tf.function(pull)
    pull_only = tf.function(lambda source: [source.get_next_as_optional().get_value()[1][0] for _ in range(k)])
    own_pull = program.pull.get_concrete_function(iterator)
    stacked = pull(iterator)
    # A static mask: no chunk updates masks, so the fused call runs its quiet programs; the
    # XLA-only cases run the same program.
    xla_program = program.quiet_fused
    span = (tf.constant(0), tf.constant(k))  # the whole chunk: steps 0 .. K - 1
    with optimizer.without_mask_updates():
        xla_concrete = xla_program.get_concrete_function(stacked, *span)

    def background(source):
        return iter(tf.data.Dataset.from_tensors(0).repeat().map(lambda _: pull(source)).prefetch(1))

    staged = background(iterator)
    from_background = tf.function(lambda source: xla_program(source.get_next(), *span))
    wait = lambda outputs: [t.numpy() for t in tf.nest.flatten(outputs)]  # noqa: E731

    cases = {
        "train_function (whole fused call)": lambda: program(iterator),
        "XLA program only (stacked beforehand)": lambda: wait(xla_concrete(stacked, *span)),
        "XLA program only, called as a tf.function": lambda: wait(xla_program(stacked, *span)),
        "pull + stack, then the XLA program": lambda: wait(xla_concrete(pull_and_stack(iterator), *span)),
        "pull + stack": lambda: wait(pull_and_stack(iterator)),
        "pull only": lambda: wait(pull_only(iterator)),
        "the train function's own pull": lambda: wait(own_pull(iterator)[3]),  # its stack
        "from a background pipeline": lambda: wait(from_background(staged)),
    }
    times = {name: [] for name in cases}
    builds = []
    with optimizer.without_mask_updates():
        for _ in range(args.rounds):
            for name, call in cases.items():
                times[name].append(timed(call, args.calls))
            start = time.perf_counter()
            next(background(iter(data)))
            builds.append((time.perf_counter() - start) * 1e3)
    print(f"LeNet-300-100, static 90%, K = {k}, batch 128; {args.rounds} rounds of {args.calls} calls; ms a call")
    print("| part | median | min |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} |")
    print(f"| building the background pipeline for a new iterator (once an epoch) | {statistics.median(builds):.1f} "
          f"| {min(builds):.1f} |")


if __name__ == "__main__":
    main()
