"""Streamlit glue shared by the pages (the engine in ``ic_core`` never imports streamlit)."""
