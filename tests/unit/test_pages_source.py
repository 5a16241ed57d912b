"""Static checks of the page scripts (no Streamlit run needed)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_stray_strings_that_streamlit_magic_would_draw(script):
    """A bare string after the module docstring is written onto the page by Streamlit's magic."""
    body = ast.parse(script.read_text(encoding="utf-8")).body
    stray = [n.lineno for n in body[1:] if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)]
    assert stray == [], f"{script.name}: bare expression(s) at line(s) {stray}"


@pytest.mark.parametrize("script", SCRIPTS[:-1], ids=lambda p: p.name)
def test_every_page_runs_under_the_router(script):
    """Each page hands over to app.py when opened by URL on a fresh server (sidebar, settings)."""
    assert "require_router(__file__)" in script.read_text(encoding="utf-8")
