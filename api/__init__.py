"""sopflow's edges: the HTTP API (FastAPI) and the ``sopflow`` command line.

Edges parse input, authorize, open the transaction, call ``engine`` commands and
render results. They hold no domain logic.
"""
