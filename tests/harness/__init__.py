"""The tests' shared harness: helpers and fixtures that test modules import, so that no test
module ever imports another (``tests/test_layout.py`` checks it).

One concept a module: ``wait`` (until a condition holds), ``audio`` (pitch, level, alignment),
``api`` (calls to a streamer's HTTP API), ``speaker`` (a ``loa speaker`` process), ``broker``
(Mosquitto accounts, a fleet, an MQTT client), ``upstream`` (in-test RTP upstreams),
``subscriber`` (a handshaking receiver), ``zones`` (shared zone ids), ``net`` (free ports),
``sink`` (a mixer's packet sink), ``tap`` (what a streamer sends a channel), ``loaup`` (a whole
``loa up`` stack), ``browser`` (Chromium for the studio page), ``webrtc`` (an aiortc offer).
Nothing here is collected by pytest: no name starts with ``test_``.
"""
