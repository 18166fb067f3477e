"""Server layer: the Tornado application (thin handlers), the composition root, and what the
read-only routes show."""

from llmgw.server.gateway import GatewayServer
from llmgw.server.services import Services, build

__all__ = ["GatewayServer", "Services", "build"]
