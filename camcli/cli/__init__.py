"""The command layer: parse options, call the library, show its results, choose exit codes.

One module per command group; ``app`` registers them. Only this package and
``camcli.display`` print.
"""

from camcli.cli.app import app, main

__all__ = ["app", "main"]
