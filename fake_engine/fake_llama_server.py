#!/usr/bin/env python3
"""A fake ``llama-server`` for tests: same command line, endpoints and answer shapes, no model.

Run as ``python fake_engine/fake_llama_server.py ARGS`` (tornado + stdlib only): the tests, the
benchmarks and the gateway's configs start it by this path. The server itself is the package
``fake_engine.server``; README.md lists the flags, the endpoints, the events file and the
counting rule. The counting rule is re-exported here for callers that import it from this module.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if not __package__:
    # Run as a script: Python put this directory first on sys.path. Put the repository there
    # instead, so the package imports as fake_engine.server and no module of this directory
    # shadows a top-level name.
    if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
        sys.path[0] = str(_HERE.parent)
    else:
        sys.path.insert(0, str(_HERE.parent))

from fake_engine.fake_llama_tokenize import (  # noqa: E402
    count_messages_tokens,
    count_prompt_tokens,
    count_responses_tokens,
    messages_to_chat,
    render_template,
    responses_to_chat,
    tokenize,
)
from fake_engine.server.app import main  # noqa: E402
from fake_engine.server.options import Options, parse_args  # noqa: E402

__all__ = [
    "Options",
    "count_messages_tokens",
    "count_prompt_tokens",
    "count_responses_tokens",
    "main",
    "messages_to_chat",
    "parse_args",
    "render_template",
    "responses_to_chat",
    "tokenize",
]

if __name__ == "__main__":
    sys.exit(main())
