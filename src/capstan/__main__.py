"""``python -m capstan``: the same as the ``capstan`` command."""

from capstan.cli.main import main

main()
