"""Server layer: Tornado application, handlers and the streaming proxy."""

from llmgw.server.gateway_server import GatewayServer
from llmgw.server.request_handler import RequestHandler

__all__ = ["GatewayServer", "RequestHandler"]
