"""``python -m core.cli``: the same as the ``segflow`` console script."""

from core.cli import entry

entry()
