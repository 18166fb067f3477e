"""``python -m llmgw agent``: on a host that lends its devices to other hosts' engines over
llama.cpp's RPC backend, supervise ``ggml-rpc-server`` (restart it when it dies, keep its weight
cache) and tell gateways how it stands (build, devices, free memory, who holds it).

No model logic here, and none of the gateway's: the agent imports neither ``server``, ``proxy``
nor ``scheduling`` (tests/unit/test_layers.py checks it).
"""
