"""What every Loa process uses, server or device: configuration loading (``config.py``),
process health metrics (``procmetrics.py``) and private secret files (``secretfile.py``).

This package imports nothing else of Loa's: a relay or a speaker depends on it without
pulling in the streamer.
"""
