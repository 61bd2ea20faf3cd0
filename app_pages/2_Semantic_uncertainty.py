"""Semantic vs surface uncertainty: A1 / A2 / A3 on a question set (Farquhar et al. 2024; SEPs, arXiv 2406.15927)."""

from ui.page import lab_page
from ui.uq_view import render

CAPTION = (
    "Does answering only the questions where the model is semantically sure reduce errors more than "
    "usual (token-level) confidence? A1 = accuracy on all questions, A2 = on the 50% most certain by a "
    "usual score, A3 = the same by semantic entropy."
)

with lab_page("Semantic vs surface uncertainty", ":material/psychology:", CAPTION):
    render()
