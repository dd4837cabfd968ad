"""The four studies of Van Gelder et al. 2020, as library calls the binaries compose.

- ``reinit``: retrain a trained mask from the original, a new, a reshuffled and a signed
  constant initialization (claim 1; variants of Zhou et al. 2019).
- ``further_pruning``: accuracy after extra magnitude pruning with no retraining (claim 2).
- ``structure``: how early RigL's final mask appears, and early-frozen RigL (claims 3 and 4).

Beside them, ``sparsity_types``: accuracy per sparsity type (unstructured, N:M, blocks, channels)
at matched density, for each algorithm (issue 18).
"""
