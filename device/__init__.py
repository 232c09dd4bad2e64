"""The device side of Loa's control plane, apart from the server: what a relay or a speaker
needs to join MQTT (``link.py``) and the MQTT edge it shares with the streamer's ``Fleet``
(``edge.py``). A device process imports this package and the contract (``messages.py``),
never the server package ``streamer``.
"""
