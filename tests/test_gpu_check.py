"""benchmarks/gpu_check.py without a GPU: its refusal, its comparison helpers on hand-made masks,
its verdict line, its case list, and one of its cheapest cases (the smoke mode's static CNN
through the Trainer) compared with itself. Nothing here needs a GPU; the whole script's CPU smoke
run (``--allow-cpu``) takes minutes and is not run here."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import gpu_check  # noqa: E402


def test_refuses_in_one_line_without_a_gpu_unless_allowed():
    message = gpu_check.refusal(0, allow_cpu=False, cuda_build=True, tf_version="2.21.0")
    assert message.startswith("gpu_check: no GPU visible to TensorFlow 2.21.0") and "\n" not in message
    assert "--allow-cpu" in message
    assert "tensorflow[and-cuda]" in gpu_check.refusal(0, allow_cpu=False, cuda_build=False)
    assert gpu_check.refusal(0, allow_cpu=True, cuda_build=True) is None
    assert gpu_check.refusal(1, allow_cpu=False, cuda_build=True) is None


def _masks():
    return {"a/kernel": np.array([[1, 1, 0, 0], [0, 0, 1, 0]], bool), "b/kernel": np.array([1, 0, 0, 1, 0], bool)}


def test_equal_masks_pass_even_when_exact():
    comparison = gpu_check.compare_masks(_masks(), _masks())
    assert comparison["differing"] == 0 and comparison["active"] == comparison["reference_active"] == 5
    assert gpu_check.mask_problem(comparison, exact=True, per_layer_counts=True, tolerance=0.0) is None


def test_a_flipped_near_tie_is_counted_and_judged_by_the_tolerance():
    ours = _masks()
    ours["a/kernel"][0, 0], ours["a/kernel"][0, 2] = False, True  # one weight swapped for another, same layer
    comparison = gpu_check.compare_masks(ours, _masks())
    assert comparison["differing"] == 2 and comparison["layers"]["a/kernel"]["differing"] == 2
    assert comparison["layer_counts_equal"]
    assert "2 mask entries differ" in gpu_check.mask_problem(comparison, True, True, 0.5)  # exact: none may differ
    assert gpu_check.mask_problem(comparison, False, True, 0.4) is None  # 2 <= 0.4 * 5
    assert "over the tolerance" in gpu_check.mask_problem(comparison, False, True, 0.2)


def test_active_counts_must_match_per_layer_or_in_total():
    ours = _masks()
    ours["a/kernel"][0, 0], ours["b/kernel"][1] = False, True  # one weight moved between layers (SNIP can)
    comparison = gpu_check.compare_masks(ours, _masks())
    assert not comparison["layer_counts_equal"] and comparison["active"] == comparison["reference_active"]
    assert "active counts differ" in gpu_check.mask_problem(comparison, False, True, 1.0)
    assert gpu_check.mask_problem(comparison, False, False, 1.0) is None
    ours["b/kernel"][2] = True  # one weight more in total
    assert "6 active weights" in gpu_check.mask_problem(gpu_check.compare_masks(ours, _masks()), False, False, 1.0)
    other = {"a/kernel": _masks()["a/kernel"]}
    assert "keys or shapes" in gpu_check.mask_problem(gpu_check.compare_masks(other, _masks()), False, False, 1.0)


def test_pruned_nonzeros_counts_only_exact_nonzeros_where_the_mask_is_off():
    masks = {"k": np.array([True, False, False, False])}
    assert gpu_check.pruned_nonzeros({"k": np.array([3.0, 0.0, -0.0, 1e-30], np.float32)}, masks) == {"k": 1}
    assert gpu_check.pruned_nonzeros({"k": np.array([3.0, 0.0, 0.0, 0.0])}, masks) == {"k": 0}
    difference = gpu_check.weight_difference({"k": np.array([1.0, 2.0])}, {"k": np.array([1.0, 2.5])})
    assert difference == {"max_abs": 0.5, "relative": 0.2}


def test_arrays_round_trip_with_slashes_in_keys(tmp_path):
    path = str(tmp_path / "case.npz")
    gpu_check.save_arrays(path, {"masks": _masks(), "weights": {"a/kernel": np.ones((2, 4), np.float32)}})
    loaded = gpu_check.load_arrays(path)
    assert list(loaded["masks"]) == ["a/kernel", "b/kernel"]
    np.testing.assert_array_equal(loaded["masks"]["b/kernel"], _masks()["b/kernel"])


def test_verdict_is_one_line_with_the_first_problem():
    status, line = gpu_check.verdict({"problems": ["x: 3 pruned weights not exactly 0", "y: failed"]}, "out.json")
    assert status == 1 and "\n" not in line
    assert line == "gpu_check: FAILED (2 problems): x: 3 pruned weights not exactly 0; 1 more in out.json"
    assert gpu_check.verdict({"problems": [], "device": "GPU:0, H100", "wall_seconds": 200.0}, "o")[0] == 0


def test_every_algorithm_runs_on_both_paths_and_only_float_free_masks_are_exact():
    cases = gpu_check.check_cases(smoke=True, algorithms=gpu_check.common.ALGORITHMS)
    assert [c["index"] for c in cases] == list(range(len(cases))) and len({c["id"] for c in cases}) == len(cases)
    for name in gpu_check.common.ALGORITHMS:
        paths = {c["path"] for c in cases if c["model"] == "mnist1d_cnn" and c["algorithm"] == name}
        assert paths == {"trainer", "fit"}, name
    assert {c["label"] for c in cases if c["exact"]} == {"dense", "static", "set@0"}
    assert {c["algorithm"] for c in cases if not c["per_layer_counts"]} == {"snip"}


def test_cheapest_case_runs_and_compares_with_itself(tmp_path):
    """The smoke mode's static CNN through ks.Trainer with XLA, as a worker runs it, compared with
    itself by the coordinator's code: no problem, no differing entry, pruned weights zero."""
    case = next(c for c in gpu_check.check_cases(smoke=True, algorithms=["static"]) if c["path"] == "trainer")
    initial = gpu_check.initial_weights(gpu_check.check_models([case]))
    record = {"cases": {s["index"]: s for s in gpu_check.run_cases([case], initial, str(tmp_path), "device")}}
    os.link(tmp_path / f"device{case['index']}.npz", tmp_path / f"cpu{case['index']}.npz")
    [result] = gpu_check.compare_cases([case], record, record, str(tmp_path), 0.0, on_gpu=False)
    assert result["problems"] == [], result
    assert result["steps"] == 12 and result["zero_checks"] == 12 and result["pruned_nonzero"] == 0
    assert result["vs_cpu"]["differing"] == 0 and result["vs_cpu"]["layer_counts_equal"]
    assert abs(result["sparsity"] - 0.9) < 0.02
