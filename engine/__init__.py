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
# On a small shared CPU, OpenMP threads that spin while waiting make torch slower when the cores are
# oversubscribed; passive waiting costs ~12% when they are idle. Measured on 2 cores, perplexity over
# 2k tokens of Gemma 3 270M: idle, PASSIVE 4.7 s vs ACTIVE 4.2 s; one core busy elsewhere, PASSIVE
# 8.7 s vs libgomp's default spinning 22.4 s. Set OMP_WAIT_POLICY yourself on a dedicated machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
