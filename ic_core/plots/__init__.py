"""Plotly figure builders: pure functions returning ``go.Figure``, one module per area."""
