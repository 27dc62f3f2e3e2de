"""A worker whose first line imports a module that is not installed."""

import not_a_module  # noqa: F401  # the failure under test

print("never reached")
