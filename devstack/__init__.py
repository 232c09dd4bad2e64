"""A whole Loa stack on one machine, for ``loa up``, the tests and the benchmarks.

``services`` (private ``redis-server`` and Mosquitto), ``supervise`` (keep children running,
stop them in dependency order) and ``up`` (the ``loa up`` command). Production processes
never import this package: it depends on them, never the other way round.
"""
