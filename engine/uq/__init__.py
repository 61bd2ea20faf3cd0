"""Semantic vs surface uncertainty: A1 / A2 / A3 on a question set (Farquhar et al. 2024; SEPs, arXiv 2406.15927)."""
