"""The downstream half shared by the streamer and every relay: one UDP socket that sends each
channel to its subscribers, and the HTTP routes every media process serves.

``endpoint`` (the fan-out), ``mmsg`` (batched ``sendmmsg``/``recvmmsg``), ``ring`` (the join
burst), ``udp`` (reading a socket's backlog beside asyncio), ``http`` (SDP, listen-in, health,
metrics). It imports the wire contract and never the streamer or the relay.
"""
