"""A worker whose first statement imports a module that is not installed."""

import capstan_ui_no_such_module  # noqa: F401  # the failure under test

print("never reached")
