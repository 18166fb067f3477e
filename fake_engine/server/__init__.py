"""The fake llama-server, as a package (run it with ``python fake_engine/fake_llama_server.py``).

Rooms: ``options`` (the command line), ``state`` (slots, counters, events, output lines),
``errors`` and ``bodies`` (llama-server's error answers and body rules), ``shapes`` (the JSON and
SSE shapes of the answers), ``routes/`` (one module per route family) and ``app`` (the Tornado
application and ``main``). README.md in ``fake_engine/`` documents flags, routes and events.
"""
