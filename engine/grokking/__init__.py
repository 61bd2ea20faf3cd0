"""Grokking modular arithmetic (Power et al. 2022) and whether super weights appear when it happens.

config (what determines a run; no torch) -> tasks (data), contexts (the markov context), llm / models ->
runs (a run's folder) -> training (the loop; suppression, zeroing) -> measures, llm_measures (a checkpoint's
measures), measure_registry (the onset measures) -> analysis (events, outcomes, sweeps) -> survival (censored
statistics) -> study (the arms x seeds study and its report).
"""
