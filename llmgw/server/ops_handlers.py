"""Operations routes: what runs, load/unload on demand, Prometheus metrics."""

from __future__ import annotations

from llmgw.errors import BadRequest, GatewayError
from llmgw.server.json_body import parse_json_object
from llmgw.server.metrics import CONTENT_TYPE
from llmgw.server.request_handler import RequestHandler


class RunningHandler(RequestHandler):
    def get(self) -> None:
        self.write_json(self.gateway.engine_summary())


class UnloadHandler(RequestHandler):
    async def post(self) -> None:
        try:
            await self.gateway.manager.unload()
        except GatewayError as exc:
            self.send_gateway_error(exc)
            return
        self.write_json({"status": "unloaded"})


class LoadHandler(RequestHandler):
    async def post(self) -> None:
        try:
            data = parse_json_object(self.request.body or b"{}").data
            if not isinstance(data.get("model"), str):
                raise BadRequest("body must be a JSON object with a string 'model' (and optional integer 'context')")
            context = data.get("context", 0)
            if isinstance(context, bool) or not isinstance(context, int) or context < 0:
                raise BadRequest("'context' must be a non-negative integer")
            self.model_name = data["model"]
            model = self.gateway.selector.model(data["model"])
            largest = self.gateway.manager.largest_context(model)
            if context > largest:
                self.gateway.manager.variant_for(model, context)  # raises ContextTooLarge
            await self.gateway.manager.ensure_engine(model, context)
        except GatewayError as exc:
            self.send_gateway_error(exc)
            return
        self.write_json({"status": "loaded", **self.gateway.engine_summary()})


class MetricsHandler(RequestHandler):
    def get(self) -> None:
        self.gateway.refresh_gauges()
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.gateway.metrics.render())
