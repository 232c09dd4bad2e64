"""Live inputs that reach the streamer over the network: the authenticated RTP ingest for
studios, hardware encoders and ffmpeg (``ingest.py``) and the browser studio (``webrtc.py``)."""
