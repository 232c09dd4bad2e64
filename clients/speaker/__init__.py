"""The software IP speaker: subscribes to one channel and plays it in sync with its neighbours.

``jitter`` reorders packets, ``playout`` places decoded audio on the wall-clock timeline,
``output`` holds the sinks and the play log, ``main`` is the ``loa speaker`` process.
"""
