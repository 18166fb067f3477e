"""The request path: one Exchange per model request (reserve an engine, count, fit, forward, relay).

Tornado-free: the server's handler hands it a ProxyRequest and a ClientSink.
"""

from llmgw.proxy.counting import TokenCounter
from llmgw.proxy.exchange import CountObserver, Exchange, Proxy
from llmgw.proxy.feedback import LoadingFeedback
from llmgw.proxy.node import LocalNode
from llmgw.proxy.routed import PooledRequest, Router, forwarded_body
from llmgw.proxy.sink import ClientGone, ClientSink, ProxyRequest

__all__ = [
    "ClientGone",
    "ClientSink",
    "CountObserver",
    "Exchange",
    "LoadingFeedback",
    "LocalNode",
    "PooledRequest",
    "Proxy",
    "ProxyRequest",
    "Router",
    "TokenCounter",
    "forwarded_body",
]
