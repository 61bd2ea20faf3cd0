"""Attention self-interpretation: every head of a prompt, text descriptions, head functions across
prompts, the model's own explanations of a head, and explain -> simulate -> score against detectors."""

from ui.attention_view import render
from ui.page import lab_page

with lab_page("Attention self-interpretation", ":material/visibility:"):
    render()
