"""Home page of the LLM internals lab: `streamlit run app.py`. Loads no model."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see engine/__init__.py)

from ui.home import render  # noqa: E402
from ui.page import lab_page  # noqa: E402

with lab_page("LLM internals lab", ":material/biotech:"):
    render()
