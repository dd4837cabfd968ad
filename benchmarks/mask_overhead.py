"""Steps/s of the masked train step against the same dense step: same model, same step body;
per model, or (``--scaling``) as an MLP grows in width and batch.

    python benchmarks/mask_overhead.py [--models lenet_300_100 mnist1d_transformer lenet5 resnet]
                                       [--rounds 21] [--batch N] [--watch-loss] [--rigl-cond]
                                       [--no-xla] [--out mask_overhead.json]
    python benchmarks/mask_overhead.py --scaling [--widths 256 512 1024 2048 4096] [--batch 128]
                                       [--batches 32 128 512 2048] [--width 1024] [--rounds 5]
                                       [--seconds 1] [--no-xla] [--out mask_overhead.json]
    python benchmarks/mask_overhead.py --combine A.json B.json ...

Models (``common.MODELS``): LeNet-300-100 and LeNet-5 on 28×28×1 inputs and ResNet-20 on
32×32×3, batch 128, SGD(0.01, momentum 0.9); the MNIST-1D transformer
(``mnist1d_transformer``, 40×1 inputs), batch 64, AdamW(1e-3). ``--batch`` sets one batch for all.

Every variant is one ``tf.function`` (``jit_compile=True`` unless ``--no-xla``) with the same
body, written in ``common.train_step``: forward, gradients, optimizer update.

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

``--watch-loss`` adds ``ks.Trainer``'s step counter and NaN record to every variant (it changes
the plain step's speed on CPU: BENCHMARKS.md).

``--scaling``: does the overhead stay flat as the work grows? ``dense`` and ``masked`` on the MLP
784 → w → w → 10 (``keras_sparse.models.build(name="mlp", hidden=(w, w))``) on 784-vectors, in two
sweeps: the width w in ``--widths`` at batch ``--batch`` (default 128), and the batch in
``--batches`` at width ``--width`` (the point both share is measured once). The steps a round are
chosen per point from a timed warm-up of the slower variant, to take about ``--seconds``.

The machine is shared and noisy: the variants take turns within each round (the order rotating
from round to round), and the tables give the median over rounds of each round's ratio (both
sides timed in the same round), with its quartiles and min–max, beside the medians' rates.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import harness  # noqa: E402
import keras  # noqa: E402

import keras_sparse as ks  # noqa: E402

STEPS = {  # steps a round per model: about 0.2 s of the step on 2 CPU cores (fewer for ResNet-20)
    "lenet_300_100": 200,
    "lenet5": 100,
    "resnet": 10,
    "mnist1d_transformer": 40,
}
RATIOS = (("masked", "dense"), ("masked_cond", "dense"), ("masked_cond", "masked"))
RIGL_RATIOS = (("rigl_masked", "dense"), ("rigl_masked_cond", "rigl_masked"))


def measure(name: str, batch: int | None, rounds: int, jit: bool, steps: int | None = None, seconds: float = 1.0,
            watch_loss: bool = False, cond: bool = True, rigl_cond: bool = False, **options) -> dict:
    """Alternates the dense and masked steps of model ``name`` (``options`` go to its builder)
    for ``rounds`` rounds of ``steps`` steps (None: about ``seconds`` a round); returns the rates
    of every round, their medians and the per-round ratios."""
    started = time.perf_counter()
    x, y = common.batch_of(name, batch)
    loss = common.loss_fn()
    dense_model = common.build(name, **options)
    variants = {"dense": common.plain_step(dense_model, common.optimizer_for(name), loss, jit, watch_loss)}
    model = common.build(name, **options)  # the same initial weights
    optimizer = common.sparse_optimizer(model, common.algorithm("static"), common.optimizer_for(name))
    variants["masked"] = common.sparse_step(model, optimizer, loss, jit, update=False, watch_loss=watch_loss)
    if cond:
        variants["masked_cond"] = common.sparse_step(model, optimizer, loss, jit, update=None, watch_loss=watch_loss)
    if rigl_cond:
        rigl_model = common.build(name, **options)
        rigl = common.sparse_optimizer(rigl_model, common.algorithm("rigl", every=10**5, end_step=10**5),
                                       common.optimizer_for(name))
        variants["rigl_masked"] = common.sparse_step(rigl_model, rigl, loss, jit, update=False, watch_loss=watch_loss)
        variants["rigl_masked_cond"] = common.sparse_step(rigl_model, rigl, loss, jit, update=None,
                                                          watch_loss=watch_loss)
    for step in variants.values():
        step(x, y).numpy()  # compile
    if steps is None:
        steps = min(common.steps_for(step, x, y, seconds) for step in variants.values())
    rates = common.rotated_rates(variants, x, y, steps, rounds)
    pairs = [(a, b) for a, b in RATIOS + RIGL_RATIOS if a in variants and b in variants]
    result = {"model": name, "options": options, "batch": int(x.shape[0]),
              "optimizer": type(common.optimizer_for(name)).__name__, "parameters": dense_model.count_params(),
              "xla": jit, "watch_loss": watch_loss, "steps": steps, "rounds": rounds, "steps_per_second": rates,
              "median": {n: statistics.median(v) for n, v in rates.items()},
              "ratios": {f"{a}/{b}": harness.round_ratios(rates, a, b) for a, b in pairs},
              "sparsity": ks.sparsity(model), "seconds": time.perf_counter() - started}
    keras.backend.clear_session()  # the widest MLPs hold ~20M parameters each: let them go
    return result


def ratio_cell(runs: list[dict], label: str, spread: str | None = None) -> str:
    return harness.ratio_cells([r["ratios"][label] for r in runs], spread)


def report(runs: list[dict]) -> str:
    """The tables of one run, or of several (cells "A / B / …", rows that every run has)."""
    first = runs[0]
    setting = (f"XLA {'on' if first['xla'] else 'off'}, static 90% masks, {first['rounds']} rounds, variants "
               f"alternating; ratios: median of per-round ratios"
               + (", NaN watch in every step" if first["watch_loss"] else ""))
    if first["mode"] == "scaling":
        keys = [(r["options"]["hidden"][0], r["batch"]) for r in first["results"]]
        rows = []
        for width, batch in keys:
            def at(run, w=width, b=batch):
                return next(r for r in run["results"] if r["options"]["hidden"][0] == w and r["batch"] == b)

            if not all(any(r["options"]["hidden"][0] == width and r["batch"] == batch for r in run["results"])
                       for run in runs):
                continue
            points = [at(run) for run in runs]
            rows.append([str(width), f"{points[0]['parameters']:,}", str(batch),
                         harness.cells(points, lambda p: p["steps"]),
                         harness.cells(points, lambda p: 1000 / p["median"]["dense"], 2),
                         harness.cells(points, lambda p: 1000 / p["median"]["masked"], 2),
                         harness.cells(points, lambda p: p["median"]["masked"] / p["median"]["dense"]),
                         ratio_cell(points, "masked/dense", "range")])
        return (f"MLP 784 → w → w → 10, {setting}\n\n"
                + harness.table(["width", "parameters", "batch", "steps a round", "dense ms/step", "masked ms/step",
                                 "masked ÷ dense (medians)", "masked ÷ dense (round ratios, min–max)"], rows))

    names = [r["model"] for r in first["results"] if all(any(s["model"] == r["model"] for s in run["results"])
                                                         for run in runs)]
    out = [setting]
    rows, rigl_rows = [], []
    for name in names:
        points = [next(r for r in run["results"] if r["model"] == name) for run in runs]
        medians = [p["median"] for p in points]
        row = [name, f"{points[0]['batch']}, {points[0]['optimizer']}", harness.cells(points, lambda p: p["steps"]),
               *(harness.cells(medians, lambda m, v=v: m[v], 1) for v in ("dense", "masked", "masked_cond")
                 if v in medians[0]),
               ratio_cell(points, "masked/dense", "iqr"), ratio_cell(points, "masked/dense", "range only")]
        row += [ratio_cell(points, label) for label in ("masked_cond/dense", "masked_cond/masked")
                if label in points[0]["ratios"]]
        rows.append(row)
        if all("rigl_masked" in m for m in medians):
            rigl_rows.append([name, *(harness.cells(medians, lambda m, v=v: m[v], 1)
                                      for v in ("rigl_masked", "rigl_masked_cond")),
                              *(ratio_cell(points, f"{a}/{b}") for a, b in RIGL_RATIOS)])
    cond = "masked_cond" in first["results"][0]["median"]
    header = ["model", "batch, optimizer", "steps a round", "dense steps/s", "masked steps/s",
              *(["masked_cond steps/s"] if cond else []), "masked ÷ dense (IQR)", "masked ÷ dense min–max",
              *(["masked_cond ÷ dense", "masked_cond ÷ masked"] if cond else [])]
    out.append(harness.table(header, rows))
    if rigl_rows:
        out.append("RigL 90%, steps that do not update the masks\n\n" + harness.table(
            ["model", "rigl_masked steps/s", "rigl_masked_cond steps/s", "rigl_masked ÷ dense",
             "rigl_masked_cond ÷ rigl_masked"], rigl_rows))
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet_300_100", "mnist1d_transformer", "lenet5", "resnet"],
                        choices=list(STEPS))
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 21; 5 with --scaling)")
    parser.add_argument("--batch", type=int, default=None,
                        help="one batch size for every model (default: per model); with --scaling, the batch of "
                             "the width sweep (default 128)")
    parser.add_argument("--watch-loss", action="store_true")
    parser.add_argument("--rigl-cond", action="store_true", help="add RigL's step with and without the tf.cond")
    parser.add_argument("--no-xla", action="store_true")
    parser.add_argument("--scaling", action="store_true", help="MLP width and batch sweeps instead of --models")
    parser.add_argument("--widths", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 128, 512, 2048])
    parser.add_argument("--width", type=int, default=1024, help="width of the batch sweep")
    parser.add_argument("--seconds", type=float, default=1.0, help="--scaling: about how long a variant's round takes")
    parser.add_argument("--out", default="mask_overhead.json")
    parser.add_argument("--combine", nargs="+", metavar="JSON", help=harness.COMBINE_HELP)
    args = parser.parse_args()
    if args.combine:
        print(report(harness.load_runs(args.combine)))
        return
    jit = not args.no_xla
    if args.scaling:
        rounds, batch = args.rounds or 5, args.batch or 128
        points = [(width, batch) for width in args.widths]
        points += [(args.width, b) for b in args.batches if (args.width, b) not in points]
        results = [measure("mlp", b, rounds, jit, seconds=args.seconds, watch_loss=args.watch_loss, cond=False,
                           hidden=(w, w)) for w, b in points]
    else:
        rounds = args.rounds or 21
        results = [measure(name, args.batch, rounds, jit, steps=STEPS[name], watch_loss=args.watch_loss,
                           rigl_cond=args.rigl_cond) for name in args.models]
    run = {"mode": "scaling" if args.scaling else "models", "xla": jit, "rounds": rounds,
           "watch_loss": args.watch_loss, "results": results}
    print(report([run]))
    harness.write_json(args.out, run)


if __name__ == "__main__":
    main()
