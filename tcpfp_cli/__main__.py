"""``python -m tcpfp_cli``: the same as the ``tcpfp`` command."""

from .cli import main

main()
