"""Steps/s of the masked train step against the same dense step: same model, same step body.

    python benchmarks/mask_overhead.py [--models lenet_300_100 mnist1d_transformer lenet5 resnet]
                                       [--rounds 21] [--batch N] [--watch-loss] [--rigl-cond]
                                       [--no-xla] [--out mask_overhead.json]

Models (``common.MODELS``): LeNet-300-100 and LeNet-5 on 28×28×1 inputs and ResNet-20 on
32×32×3, batch 128, SGD(0.01, momentum 0.9); the MNIST-1D transformer
(``mnist1d_transformer``, 40×1 inputs), batch 64, AdamW(1e-3). ``--batch`` sets one batch for all.

Every variant is one ``tf.function`` (``jit_compile=True`` unless ``--no-xla``) with the same
body, written here (``common.train_step``): forward, gradients, optimizer update.

- ``dense``: the plain, unwrapped model with the plain optimizer (``optimizer.apply``): the
  baseline of the ratios.
- ``masked``: the same architecture and initial weights, ``ks.wrap``-ped (every default weight
  masked) at 90% static sparsity, trained through ``ks.SparseOptimizer(optimizer,
  StaticSparse(0.9))`` with ``optimizer.sparse_apply(grads, variables, update=False)``: gradients
  masked, the optimizer's update, weights re-masked. This is the program ``ks.Trainer`` compiles
  for its plain steps.
- ``masked_cond``: the same model and optimizer through ``optimizer.apply(grads, variables)``,
  which decides in-graph, with a ``tf.cond`` over the algorithm's update table, whether the
  step updates the masks: the program ``model.fit`` (and a ``GradientTape`` loop) runs. For
  static sparsity the condition is always false; the difference to ``masked`` is the cost of
  the conditional.

``--rigl-cond`` adds the same pair for RigL(0.9) on another wrapped copy, at steps that do not
update the masks (its only update step is step 0, run before timing): ``rigl_masked``
(``sparse_apply(update=False)``) and ``rigl_masked_cond`` (``optimizer.apply``), to see whether
the conditional costs more when its update branch holds RigL's drop and grow.

``--watch-loss`` adds ``ks.Trainer``'s step counter and NaN record to every variant (on
LeNet-300-100 it made the plain step faster in earlier sessions, see BENCHMARKS.md).

The machine is shared and noisy: the variants take turns within each round (the order rotating
from round to round), and the script reports, per model, the median over rounds of each
round's ratio (masked ÷ dense, both timed in the same round), with the ratios' min–max and
quartiles, beside the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_sparse as ks  # noqa: E402

import common  # noqa: E402

STEPS = {  # steps a round per model: about 0.2 s of the step on 2 CPU cores (fewer for ResNet-20)
    "lenet_300_100": 200,
    "lenet5": 100,
    "resnet": 10,
    "mnist1d_transformer": 40,
}
RATIOS = (("masked", "dense"), ("masked_cond", "dense"), ("masked_cond", "masked"))
RIGL_RATIOS = (("rigl_masked", "dense"), ("rigl_masked_cond", "rigl_masked"))


def measure(name: str, batch: int | None, rounds: int, jit: bool, watch_loss: bool, rigl_cond: bool = False) -> dict:
    """Alternates the dense and the two masked steps of model ``name``; returns the rates of
    every round, their medians, and the per-round ratios."""
    started = time.perf_counter()
    x, y = common.batch_of(name, batch)
    loss = common.loss_fn()
    dense = common.plain_step(common.build(name), common.optimizer_for(name), loss, jit, watch_loss)
    model = common.build(name)  # the same initial weights
    optimizer = common.sparse_optimizer(model, ks.algorithms.StaticSparse(sparsity=0.9), common.optimizer_for(name))
    variants = {"dense": dense,
                "masked": common.sparse_step(model, optimizer, loss, jit, update=False, watch_loss=watch_loss),
                "masked_cond": common.sparse_step(model, optimizer, loss, jit, update=None, watch_loss=watch_loss)}
    if rigl_cond:
        rigl_model = common.build(name)
        rigl = common.sparse_optimizer(rigl_model, ks.algorithms.RigL(sparsity=0.9, update_frequency=10**5,
                                                                      end_step=10**5),
                                       common.optimizer_for(name))
        variants["rigl_masked"] = common.sparse_step(rigl_model, rigl, loss, jit, update=False, watch_loss=watch_loss)
        variants["rigl_masked_cond"] = common.sparse_step(rigl_model, rigl, loss, jit, update=None,
                                                          watch_loss=watch_loss)
    for step in variants.values():
        step(x, y).numpy()  # compile
    steps = STEPS[name]
    names = list(variants)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            rates[n].append(common.steps_per_second(variants[n], x, y, steps))
    medians = {n: statistics.median(v) for n, v in rates.items()}
    ratios = {f"{a}/{b}": common.round_ratios(rates, a, b) for a, b in RATIOS + (RIGL_RATIOS if rigl_cond else ())}
    return {"model": name, "batch": int(x.shape[0]), "optimizer": type(common.optimizer_for(name)).__name__,
            "xla": jit, "watch_loss": watch_loss, "steps": steps, "rounds": rounds, "steps_per_second": rates,
            "median": medians, "ratios": ratios,
            "masked_over_dense": ratios["masked/dense"]["median"],
            "masked_over_dense_of_medians": medians["masked"] / medians["dense"],
            "sparsity": ks.sparsity(model), "seconds": time.perf_counter() - started}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet_300_100", "mnist1d_transformer", "lenet5", "resnet"],
                        choices=list(STEPS))
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--batch", type=int, default=None, help="one batch size for every model (default: per model)")
    parser.add_argument("--watch-loss", action="store_true")
    parser.add_argument("--rigl-cond", action="store_true", help="add RigL's step with and without the tf.cond")
    parser.add_argument("--no-xla", action="store_true")
    parser.add_argument("--out", default="mask_overhead.json")
    args = parser.parse_args()
    results = [measure(name, args.batch, args.rounds, not args.no_xla, args.watch_loss, args.rigl_cond)
               for name in args.models]
    print(f"XLA {'on' if not args.no_xla else 'off'}, static 90% masks, {args.rounds} rounds, variants alternating; "
          f"ratios: median of per-round ratios (min–max){', NaN watch in every step' if args.watch_loss else ''}\n")
    print("| model | batch, optimizer | steps a round | dense steps/s | masked steps/s | masked_cond steps/s "
          "| masked ÷ dense | masked_cond ÷ dense | masked_cond ÷ masked |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m = r["median"]
        cells = " | ".join(f"{r['ratios'][f'{a}/{b}']['median']:.3f} ({r['ratios'][f'{a}/{b}']['min']:.3f}–"
                           f"{r['ratios'][f'{a}/{b}']['max']:.3f})" for a, b in RATIOS)
        print(f"| {r['model']} | {r['batch']}, {r['optimizer']} | {r['steps']} | {m['dense']:.1f} | {m['masked']:.1f} "
              f"| {m['masked_cond']:.1f} | {cells} |")
    if args.rigl_cond:
        print("\nRigL 90%, steps that do not update the masks\n")
        print("| model | rigl_masked steps/s | rigl_masked_cond steps/s | rigl_masked ÷ dense "
              "| rigl_masked_cond ÷ rigl_masked |\n|---|---|---|---|---|")
        for r in results:
            m = r["median"]
            cells = " | ".join(f"{r['ratios'][f'{a}/{b}']['median']:.3f} ({r['ratios'][f'{a}/{b}']['min']:.3f}–"
                               f"{r['ratios'][f'{a}/{b}']['max']:.3f})" for a, b in RIGL_RATIOS)
            print(f"| {r['model']} | {m['rigl_masked']:.1f} | {m['rigl_masked_cond']:.1f} | {cells} |")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
