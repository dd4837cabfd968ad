"""Layer-wise sparsity distributions: how a global sparsity target is spread over layers.

``uniform`` gives every layer the same sparsity (optionally keeping the first layer dense, as
in Gale et al. 2019). ``erdos_renyi`` and ``erdos_renyi_kernel`` (ERK) come from Mocanu et al.
2018 and Evci et al. 2020 ("Rigging the Lottery", Appendix): a layer's density is proportional
to (sum of dims) / (product of dims), over the last two dims for ER and all dims for ERK, scaled
so that the total number of active weights meets the target; layers that would exceed density
1 are kept dense and the rest rescaled. A dict maps layer names to sparsities explicitly.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence, Union

import numpy as np

from keras_sparse.errors import ConfigError
from keras_sparse.masking import most_specific

Shapes = Mapping[str, Sequence[int]]
Distribution = Union[str, Mapping[str, float]]

_DISTRIBUTIONS: dict[str, Callable[..., dict[str, float]]] = {}


def _register(name: str):
    def decorator(fn):
        _DISTRIBUTIONS[name] = fn
        return fn

    return decorator


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Returns ``sparsity`` as a float, or raises a one-line error if it is outside [0, 1)."""
    value = float(sparsity)
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{what}={sparsity!r} is outside [0, 1): pass a fraction such as 0.9 for 90% sparsity.")
    return value


@_register("uniform")
def uniform(shapes: Shapes, sparsity: float, first_layer_dense: bool = False) -> dict[str, float]:
    """Every layer at ``sparsity``; the first layer (in ``shapes``' order) dense if asked."""
    result = {name: sparsity for name in shapes}
    if first_layer_dense and result:
        result[next(iter(shapes))] = 0.0
    return result


def _erdos_renyi_family(shapes: Shapes, sparsity: float, use_all_dims: bool,
                        first_layer_dense: bool = False) -> dict[str, float]:
    sizes = {name: float(np.prod(shape)) for name, shape in shapes.items()}
    raw = {}
    for name, shape in shapes.items():
        dims = list(shape) if use_all_dims else list(shape[-2:])
        raw[name] = float(np.sum(dims) / np.prod(dims))
    # A layer kept dense takes its weights out of the budget the others share (rigl's dense layers).
    dense: set[str] = {next(iter(shapes))} if first_layer_dense and shapes else set()
    total_active = (1.0 - sparsity) * sum(sizes.values())
    while True:
        budget = total_active - sum(sizes[name] for name in dense)
        divisor = sum(raw[name] * sizes[name] for name in shapes if name not in dense)
        if divisor <= 0:
            break
        scale = budget / divisor
        too_dense = [name for name in shapes if name not in dense and scale * raw[name] > 1.0]
        if not too_dense:
            break
        dense.update(too_dense)
    return {name: 0.0 if name in dense else max(0.0, 1.0 - scale * raw[name]) for name in shapes}


@_register("erdos_renyi")
def erdos_renyi(shapes: Shapes, sparsity: float, first_layer_dense: bool = False) -> dict[str, float]:
    """Erdős–Rényi: density ∝ (n_in + n_out) / (n_in · n_out), from a kernel's last two dims;
    the first layer dense if asked, the others sharing the rest of the budget."""
    return _erdos_renyi_family(shapes, sparsity, use_all_dims=False, first_layer_dense=first_layer_dense)


@_register("erdos_renyi_kernel")
def erdos_renyi_kernel(shapes: Shapes, sparsity: float, first_layer_dense: bool = False) -> dict[str, float]:
    """ERK: density ∝ sum of all kernel dims / product of them (Evci et al. 2020); the first
    layer dense if asked, the others sharing the rest of the budget."""
    return _erdos_renyi_family(shapes, sparsity, use_all_dims=True, first_layer_dense=first_layer_dense)


def names() -> list[str]:
    """Names accepted as a distribution, besides an explicit per-layer dict."""
    return sorted(_DISTRIBUTIONS)


def layer_sparsities(shapes: Shapes, sparsity: float, distribution: Distribution = "uniform",
                     **options) -> dict[str, float]:
    """Per-layer sparsity for kernels ``shapes`` ({key: shape}) under ``distribution``.

    Keys are mask keys such as ``"dense_1/kernel"``. An explicit map may name a layer
    (``"dense_1"``, applying to all its kernels) or a key; kernels it does not name get the
    global ``sparsity``. Options such as ``first_layer_dense`` go to the named distribution.
    """
    check_sparsity(sparsity)
    if isinstance(distribution, Mapping):
        return _explicit(shapes, sparsity, distribution)
    if distribution not in _DISTRIBUTIONS:
        raise ConfigError(f"Unknown sparsity distribution {distribution!r}: use one of {names()} "
                          "or a dict {layer_name: sparsity}.")
    return _DISTRIBUTIONS[distribution](shapes, sparsity, **options)


def _explicit(shapes: Shapes, sparsity: float, per_layer: Mapping[str, float]) -> dict[str, float]:
    # The most specific entry wins: the weight's own path, then the longest pattern.
    chosen = most_specific(per_layer, list(shapes), "Sparsity map")
    return {key: check_sparsity(per_layer[pattern] if pattern is not None else sparsity, f"sparsity of {key}")
            for key, pattern in chosen.items()}
