"""``python -m controlplane`` is the ``flotilla`` command."""

from controlplane.cli.main import main

main()
