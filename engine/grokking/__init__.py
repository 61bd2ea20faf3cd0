"""Grokking modular arithmetic (Power et al. 2022) and whether super weights appear when it happens.

config (what determines a run; no torch) -> tasks (data), models -> runs (a run's folder) -> training
(the loop) -> measures (super-weight measures of a checkpoint) -> analysis (events, sweeps, statistics).
"""
