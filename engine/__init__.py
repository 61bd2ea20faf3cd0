"""Streamlit-free engine of the LLM internals lab.

Each module holds one idea (models, attention, super weights, grokking, uncertainty) and takes a
model and data and returns plain results. Importing this package loads no model and no torch.
"""

import os

# The lab runs offline: never let a hub client wait on the network unless the user opts in.
if os.environ.get("LAB_ALLOW_DOWNLOAD") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# On a small shared CPU, OpenMP threads that spin while waiting make torch up to 20x slower when
# the cores are oversubscribed (measured here); passive waiting costs nothing when they are not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
