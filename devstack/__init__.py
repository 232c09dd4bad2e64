"""A whole Loa stack on one machine, for ``loa up``, the tests and the benchmarks.

``services`` (private ``redis-server`` and Mosquitto), ``supervise`` (keep children running,
stop them in dependency order), ``spawn`` (the servers, streamer, relay and speakers of
``loa up``), ``provision`` (register the devices through the API), ``state``
(``var/loa-up.json``) and ``up`` (the ``loa up`` command). Production processes never import
this package: it depends on them, never the other way round.
"""
