"""``python -m controlplane`` is the ``flotilla`` command."""

from controlplane.cli.flotilla import main

main()
