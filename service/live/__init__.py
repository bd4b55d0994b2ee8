"""Live event streams: the event logs in Redis (`log`) and each web process's one reader that
fans them out to its open streams (`hub`). The pure half is `service/domain/live.py`."""
