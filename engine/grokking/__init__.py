"""Grokking modular arithmetic (Power et al. 2022) and whether super weights appear when it happens."""
