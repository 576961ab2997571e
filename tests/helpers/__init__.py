"""Test helpers: small data trees, image files, config composition, commands."""

from pathlib import Path

#: reference values and files the tests compare against (MATLAB, the authors', hdsr 0.1.0)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
