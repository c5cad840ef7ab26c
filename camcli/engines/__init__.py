"""Engines: how sources are fed to the one per-batch function (``camcli.engines.batch``).

The local threads engine is ``camcli.engines.local``; ``camcli.engines.ray`` runs on Ray Data.
"""
