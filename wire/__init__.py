"""Loa's wire contract: what crosses a process boundary, and nothing else.

RTP packets and their header extensions (``packet.py``), RTCP (``rtcp.py``), the subscribe
handshake (``subscribe.py``), SDP and Ogg framing for listeners (``sdp.py``, ``ogg.py``), the
MQTT topics and payloads (``messages.py``), zone and device ids (``ids.py``), host:port
addresses (``addr.py``) and the priority levels (``priority.py``). The streamer, relays,
speakers and the load tester all import it; it imports nothing else of the project, reads no
clock and opens no socket (``docs/protocol.md``, ``docs/mqtt.md``).
"""
