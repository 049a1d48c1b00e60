"""Soak drills reuse the end-to-end fixtures."""

from e2e.conftest import make_gateway  # noqa: F401  (fixture)
