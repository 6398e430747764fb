"""Clients of the sonate server: the Python client, `say`, and the browser demo page that `sonate serve` serves."""

from pathlib import Path

DEMO_PAGE = Path(__file__).parent / "demo" / "index.html"  # the browser demo: one self-contained HTML file
