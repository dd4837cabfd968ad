"""Tests for keras_sparse.studies.measures on small hand-made masks and weights."""

import numpy as np
import pytest

from keras_sparse.errors import ConfigError
from keras_sparse.studies.measures import init_variant, mask_overlap, prune_further

SNAPSHOT = {"a": np.array([[1, 1, 0], [0, 1, 0]], bool), "b": np.array([1, 0, 0, 1], bool)}
FINAL = {"a": np.array([[1, 0, 0], [0, 1, 1]], bool), "b": np.array([1, 0, 0, 1], bool)}


def test_mask_overlap_by_hand():
    result = mask_overlap(SNAPSHOT, FINAL)
    # a: intersection {(0,0),(1,1)} = 2, union 4, final active 3, differing (0,1),(1,2) = 2 of 6.
    assert result["a"] == {"final_present": 2 / 3, "iou": 2 / 4, "hamming": 2, "hamming_fraction": 2 / 6}
    assert result["b"] == {"final_present": 1.0, "iou": 1.0, "hamming": 0, "hamming_fraction": 0.0}
    # overall: intersection 4, union 6, final active 5, differing 2 of 10.
    assert result["overall"] == {"final_present": 4 / 5, "iou": 4 / 6, "hamming": 2, "hamming_fraction": 2 / 10}


def test_mask_overlap_identical_and_disjoint():
    assert mask_overlap(FINAL, FINAL)["overall"]["iou"] == 1.0
    disjoint = {k: ~v for k, v in FINAL.items()}
    result = mask_overlap(disjoint, FINAL)["overall"]
    assert result["final_present"] == 0.0 and result["iou"] == 0.0 and result["hamming_fraction"] == 1.0


ORIGINAL = {"k": np.array([[0.5, -0.2, 0.1], [-0.4, 0.3, -0.6]], np.float32)}
MASK = {"k": np.array([[1, 1, 0], [1, 0, 1]], bool)}


def test_original_variant_is_the_masked_init():
    values = init_variant("original", ORIGINAL, MASK)["k"]
    np.testing.assert_array_equal(values, np.where(MASK["k"], ORIGINAL["k"], 0))


def test_new_init_uses_the_new_kernels_with_the_same_mask():
    new = {"k": np.full((2, 3), 7.0, np.float32)}
    values = init_variant("new_init", ORIGINAL, MASK, new_init=new)["k"]
    np.testing.assert_array_equal(values, np.where(MASK["k"], 7.0, 0))


def test_reshuffle_keeps_the_multiset_of_active_initial_values():
    values = [init_variant("reshuffle", ORIGINAL, MASK, seed=s)["k"] for s in range(5)]
    for v in values:
        assert np.all(v[~MASK["k"]] == 0)
        np.testing.assert_array_equal(np.sort(v[MASK["k"]]), np.sort(ORIGINAL["k"][MASK["k"]]))
    assert any(not np.array_equal(v, values[0]) for v in values[1:])  # really permuted


def test_signed_constant_has_one_magnitude_per_layer():
    values = init_variant("signed_constant", ORIGINAL, MASK)["k"]
    active = values[MASK["k"]]
    np.testing.assert_allclose(np.abs(active), ORIGINAL["k"].std())
    np.testing.assert_array_equal(np.sign(active), np.sign(ORIGINAL["k"][MASK["k"]]))
    assert np.all(values[~MASK["k"]] == 0)


def test_unknown_variant():
    with pytest.raises(ConfigError, match="Unknown init variant"):
        init_variant("zeros", ORIGINAL, MASK)


WEIGHTS = {"a": np.array([[0.9, -0.1, 0.0], [0.5, 0.3, 0.0]]), "b": np.array([0.05, -0.7, 0.2, 0.0])}
ACTIVE = {"a": np.array([[1, 1, 0], [1, 1, 0]], bool), "b": np.array([1, 1, 1, 0], bool)}


def test_layer_pruning_removes_the_fraction_in_each_layer():
    result = prune_further(WEIGHTS, ACTIVE, 0.5, "layer")
    np.testing.assert_array_equal(result["a"], [[1, 0, 0], [1, 0, 0]])  # keeps 0.9, 0.5 of 4
    # b has 3 active: keep round(1.5) = 2 (half to even), the largest |-0.7| and |0.2|.
    np.testing.assert_array_equal(result["b"], [0, 1, 1, 0])


def test_global_pruning_ranks_all_layers_together():
    result = prune_further(WEIGHTS, ACTIVE, 0.5, "global")
    # 7 active weights, keep round(3.5) = 4: 0.9, 0.7, 0.5, 0.3.
    np.testing.assert_array_equal(result["a"], [[1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(result["b"], [0, 1, 0, 0])


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("extra", [0.0, 0.3, 0.75, 1.0])
def test_exact_requested_sparsity_and_only_active_weights_kept(scope, extra):
    rng = np.random.default_rng(0)
    weights = {"x": rng.normal(size=(20, 10)), "y": rng.normal(size=(40,))}
    masks = {k: rng.random(v.shape) < 0.4 for k, v in weights.items()}
    result = prune_further(weights, masks, extra, scope)
    active = {k: int(m.sum()) for k, m in masks.items()}
    if scope == "layer":
        for key in weights:
            assert result[key].sum() == int(np.round(active[key] * (1 - extra)))
    else:
        assert sum(m.sum() for m in result.values()) == int(np.round(sum(active.values()) * (1 - extra)))
    for key in weights:
        assert not np.any(result[key] & ~masks[key])
