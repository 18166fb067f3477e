"""llmgw benchmarks: what users feel, measured side by side with the direct path.

Run ``python -m benchmarks`` (full run, about 10 minutes) or ``python -m benchmarks --quick``
(about 2 minutes); see ``benchmarks/README.md``.
"""
