"""Intention Collapse engine: read a causal LM's pre-generation state, then generate.

The engine never imports streamlit; the app in ``app.py`` and ``pages/`` is a thin layer.
"""

__version__ = "0.1.0"
