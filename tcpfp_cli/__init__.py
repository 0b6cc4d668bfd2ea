"""tcpfp: fingerprint the TCP stacks of HTTP clients on Linux.

The pure core (``syn``, ``options``, ``signature``, ``tcpinfo``, ``fields``)
turns kernel bytes into fields; the CLI and the server only adapt it.
"""

__version__ = "0.1.0"
