"""Operations routes: what runs, load/unload on demand, Prometheus metrics."""

from __future__ import annotations

from llmgw.errors import BadRequest, GatewayError
from llmgw.server.json_body import parse_json_object
from llmgw.server.metrics import CONTENT_TYPE
from llmgw.server.request_handler import RequestHandler


class RunningHandler(RequestHandler):
    def get(self) -> None:
        self.write_json(self.gateway.running())


class UnloadHandler(RequestHandler):
    async def post(self) -> None:
        """``{"model": m}`` stops that model's engine; no body (or no model) stops them all, each once
        the requests that arrived before are done."""
        try:
            data = parse_json_object(self.request.body or b"{}").data
            name = data.get("model")
            if name is not None:
                if not isinstance(name, str):
                    raise BadRequest("'model' must be a string")
                self.model_name = name
                self.gateway.selector.model(name)  # 404 for an unknown model
            stopped = await self.gateway.manager.unload(name)
        except GatewayError as exc:
            self.send_gateway_error(exc)
            return
        self.write_json({"status": "unloaded", "models": sorted(set(stopped))})


class LoadHandler(RequestHandler):
    async def post(self) -> None:
        """``{"model": m, "context": n}``: start the smallest variant holding ``n`` (placement rules apply:
        idle engines may be stopped to make room, busy ones are waited for)."""
        try:
            data = parse_json_object(self.request.body or b"{}").data
            if not isinstance(data.get("model"), str):
                raise BadRequest("body must be a JSON object with a string 'model' (and optional integer 'context')")
            context = data.get("context", 0)
            if isinstance(context, bool) or not isinstance(context, int) or context < 0:
                raise BadRequest("'context' must be a non-negative integer")
            self.model_name = data["model"]
            model = self.gateway.selector.model(data["model"])
            if context > self.gateway.manager.largest_context(model):
                self.gateway.manager.variant_for(model, context)  # raises ContextTooLarge
            async with self.gateway.manager.lease(model, context) as engine:
                record = next(s for s in self.gateway.manager.engines if s.handle is engine)
                view = self.gateway.engine_view(record)
        except GatewayError as exc:
            self.send_gateway_error(exc)
            return
        self.write_json({"status": "loaded", "engine": view})


class MetricsHandler(RequestHandler):
    def get(self) -> None:
        self.gateway.refresh_gauges()
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.gateway.metrics.render())
