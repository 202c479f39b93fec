"""``python -m slaprobe``: the same as the ``slaprobe`` command."""

from slaprobe.cli import main

main()
