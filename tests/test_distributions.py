"""Layer-wise sparsity distributions, checked against values computed by hand."""

import numpy as np
import pytest

from keras_sparse import distributions, mask_ops

# A conv kernel (3,3,2,4) of 72 weights and a dense kernel (8,4) of 32: 104 weights.
SHAPES = {"conv/kernel": (3, 3, 2, 4), "fc/kernel": (8, 4)}


def _active_total(shapes, sparsities):
    return sum(mask_ops.num_active(int(np.prod(shapes[k])), s) for k, s in sparsities.items())


def test_names():
    assert distributions.names() == ["erdos_renyi", "erdos_renyi_kernel", "uniform"]


def test_uniform():
    assert distributions.layer_sparsities(SHAPES, 0.8, "uniform") == {"conv/kernel": 0.8, "fc/kernel": 0.8}


def test_uniform_first_layer_dense():
    shapes = {"a/kernel": (4, 4), "b/kernel": (4, 4), "c/kernel": (4, 2)}
    result = distributions.layer_sparsities(shapes, 0.7, "uniform", first_layer_dense=True)
    assert result == {"a/kernel": 0.0, "b/kernel": 0.7, "c/kernel": 0.7}


def test_erdos_renyi_kernel_hand_computed():
    # ERK raw density: conv (3+3+2+4)/72 = 1/6, fc (8+4)/32 = 3/8.
    # Target active: 0.25 * 104 = 26; scale = 26 / (72/6 + 32*3/8) = 26/24.
    # Densities: conv 26/144 = 13/72, fc 3/8 * 26/24 = 13/32.
    result = distributions.layer_sparsities(SHAPES, 0.75, "erdos_renyi_kernel")
    assert result["conv/kernel"] == pytest.approx(1 - 13 / 72, abs=1e-12)
    assert result["fc/kernel"] == pytest.approx(1 - 13 / 32, abs=1e-12)
    assert 72 * (1 - result["conv/kernel"]) + 32 * (1 - result["fc/kernel"]) == pytest.approx(26)


def test_erdos_renyi_hand_computed():
    # ER uses the last two dims: conv (2+4)/(2*4) = 3/4, fc 3/8.
    # scale = 26 / (72*3/4 + 32*3/8) = 26/66; densities conv 13/44, fc 13/88.
    result = distributions.layer_sparsities(SHAPES, 0.75, "erdos_renyi")
    assert result["conv/kernel"] == pytest.approx(1 - 13 / 44, abs=1e-12)
    assert result["fc/kernel"] == pytest.approx(1 - 13 / 88, abs=1e-12)


@pytest.mark.parametrize("name", ["erdos_renyi", "erdos_renyi_kernel"])
def test_erdos_renyi_keeps_too_dense_layers_dense(name):
    # raw densities: big (10+10)/100 = 0.2, small (10+2)/20 = 0.6 (ER = ERK for 2-D kernels).
    # Target 60 active: scale 60/32 would give small 1.125 > 1, so small is dense (20 weights)
    # and big gets the rest: 40/100 -> sparsity 0.6.
    shapes = {"big/kernel": (10, 10), "small/kernel": (10, 2)}
    result = distributions.layer_sparsities(shapes, 0.5, name)
    assert result["small/kernel"] == 0.0
    assert result["big/kernel"] == pytest.approx(0.6, abs=1e-12)
    assert _active_total(shapes, result) == 60


def test_erdos_renyi_kernel_cascade_of_dense_layers():
    # a (20,20): 400 weights, raw 40/400 = 0.1; b (2,2): 4, raw 1; c (20,10): 200, raw 0.15.
    # Sparsity 0.2: 483.2 active. Pass 1: scale 483.2/74 = 6.53 -> b over 1 (c at 0.98 is not).
    # Pass 2: scale (483.2-4)/70 = 6.85 -> c at 1.03 now over 1. Pass 3: a gets 279.2/400.
    shapes = {"a/kernel": (20, 20), "b/kernel": (2, 2), "c/kernel": (20, 10)}
    result = distributions.layer_sparsities(shapes, 0.2, "erdos_renyi_kernel")
    assert result["b/kernel"] == 0.0
    assert result["c/kernel"] == 0.0
    assert result["a/kernel"] == pytest.approx(1 - 279.2 / 400, abs=1e-12)


@pytest.mark.parametrize("name", ["uniform", "erdos_renyi", "erdos_renyi_kernel"])
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95])
def test_total_active_meets_target_up_to_rounding(name, sparsity):
    shapes = {"c1/kernel": (3, 3, 3, 16), "c2/kernel": (3, 3, 16, 32), "d1/kernel": (512, 64),
              "d2/kernel": (64, 10)}
    result = distributions.layer_sparsities(shapes, sparsity, name)
    assert set(result) == set(shapes)
    assert all(0.0 <= s < 1.0 for s in result.values())
    target = (1 - sparsity) * sum(int(np.prod(s)) for s in shapes.values())
    # Each layer rounds its count by at most 1/2 (num_active keeps at least one weight).
    assert abs(_active_total(shapes, result) - target) <= len(shapes) / 2


def test_zero_sparsity_is_dense_everywhere():
    for name in distributions.names():
        result = distributions.layer_sparsities(SHAPES, 0.0, name)
        assert all(s == pytest.approx(0.0, abs=1e-12) for s in result.values()), name


def test_explicit_map_by_layer_and_by_key():
    shapes = {"sep/depthwise_kernel": (3, 3, 2, 1), "sep/pointwise_kernel": (1, 1, 2, 4), "fc/kernel": (8, 4),
              "out/kernel": (4, 2)}
    result = distributions.layer_sparsities(shapes, 0.5, {"sep": 0.25, "fc/kernel": 0.9})
    assert result == {"sep/depthwise_kernel": 0.25, "sep/pointwise_kernel": 0.25, "fc/kernel": 0.9,
                      "out/kernel": 0.5}
    # A key overrides its layer's entry.
    result = distributions.layer_sparsities(shapes, 0.5, {"sep": 0.25, "sep/pointwise_kernel": 0.0})
    assert result["sep/depthwise_kernel"] == 0.25 and result["sep/pointwise_kernel"] == 0.0


def test_explicit_map_unknown_name_raises():
    with pytest.raises(ValueError, match="convv"):
        distributions.layer_sparsities(SHAPES, 0.5, {"convv": 0.5})


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_explicit_map_out_of_range_raises(bad):
    with pytest.raises(ValueError, match="fc/kernel"):
        distributions.layer_sparsities(SHAPES, 0.5, {"fc": bad})


@pytest.mark.parametrize("bad", [1.0, -0.01])
def test_global_sparsity_out_of_range_raises(bad):
    with pytest.raises(ValueError, match="outside"):
        distributions.layer_sparsities(SHAPES, bad, "uniform")


def test_unknown_distribution_raises():
    with pytest.raises(ValueError, match="gaussian"):
        distributions.layer_sparsities(SHAPES, 0.5, "gaussian")


@pytest.mark.parametrize("name", ["erdos_renyi", "erdos_renyi_kernel"])
def test_first_layer_dense_with_the_erdos_renyi_family(name):
    """The first layer dense, the others sharing the rest of the global budget (before this,
    first_layer_dense was ignored for ER/ERK without a word)."""
    shapes = {"a/kernel": (20, 30), "b/kernel": (30, 40), "c/kernel": (40, 10)}
    sizes = {k: int(np.prod(s)) for k, s in shapes.items()}
    plain = distributions.layer_sparsities(shapes, 0.8, name)
    first_dense = distributions.layer_sparsities(shapes, 0.8, name, first_layer_dense=True)
    assert first_dense["a/kernel"] == 0.0 and plain["a/kernel"] > 0.0
    pruned = sum(first_dense[k] * sizes[k] for k in shapes)
    assert pruned == pytest.approx(0.8 * sum(sizes.values()))
    assert first_dense["b/kernel"] > plain["b/kernel"] and first_dense["c/kernel"] >= plain["c/kernel"]
    # ERK keeps the ratio of the other layers' densities.
    ratio = (1 - first_dense["b/kernel"]) / (1 - first_dense["c/kernel"])
    assert ratio == pytest.approx((1 - plain["b/kernel"]) / (1 - plain["c/kernel"]))
