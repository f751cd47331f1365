"""A model file written as a script: it exits while being imported (tests/test_cli_errors.py)."""

import sys

sys.exit(0)


def build(hp):  # never reached
    raise AssertionError
