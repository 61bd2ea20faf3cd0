"""Streamlit helpers shared by the pages (model picker, cached loaders). Engine logic lives in engine/."""
