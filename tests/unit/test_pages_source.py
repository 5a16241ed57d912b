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


OWN_SCRIPTS = [ROOT / "app.py", *(ROOT / "pages" / n for n in ("1_Explore.py", "3_Study.py", "5_Governance.py"))]


def _calls(script: Path, attr: str) -> list[ast.Call]:
    tree = ast.parse(script.read_text(encoding="utf-8"))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == attr]


@pytest.mark.parametrize("script", OWN_SCRIPTS, ids=lambda p: p.name)
def test_html_markdown_is_kept_in_one_block(script):
    """Every ``unsafe_allow_html`` Markdown call wraps its (escaped) HTML in ui.common.html_block."""
    for call in _calls(script, "markdown"):
        if any(k.arg == "unsafe_allow_html" for k in call.keywords):
            first = call.args[0]
            assert isinstance(first, ast.Call) and getattr(first.func, "id", None) == "html_block", (
                f"{script.name}:{call.lineno} passes HTML to st.markdown without html_block")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_page_sets_the_gate_policy_itself(script):
    """The active policy is set and read only through ui.gate_policy (one engine path for every page)."""
    text = script.read_text(encoding="utf-8")
    assert '"gate_policy"' not in text and "Policy.from_json" not in text


def test_policy_upload_has_allow_unsigned_off_by_default():
    """The upload passes the checkbox's value to Policy.from_json; the checkbox starts unticked."""
    text = (ROOT / "ui" / "gate_policy.py").read_text(encoding="utf-8")
    assert "Policy.from_json(uploaded.getvalue(), allow_unsigned=allow_unsigned)" in text
    box = next(c for c in _calls(ROOT / "ui" / "gate_policy.py", "checkbox") if c.args[0].value == "Allow unsigned")
    assert next(k.value.value for k in box.keywords if k.arg == "value") is False
