"""A model file written as a script: it exits while being imported (tests/test_bad_input.py)."""

import sys

sys.exit(0)


def build(hp):  # never reached
    raise AssertionError
