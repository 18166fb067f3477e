"""Operations routes: what runs, load and unload on demand, Prometheus metrics."""

from __future__ import annotations

from llmgw.errors import BadRequest, GatewayError
from llmgw.server.handlers.base import GatewayHandler
from llmgw.server.json_body import parse_json_object
from llmgw.server.metrics import CONTENT_TYPE
from llmgw.server.services import Services


class RunningHandler(GatewayHandler):
    admin_only = True

    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.views = services.views

    def get(self) -> None:
        self.write_json(self.views.running())


class UnloadHandler(GatewayHandler):
    admin_only = True

    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.views = services.views
        self.manager = services.manager

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
                self.views.model(name, self.principal)  # 404 for an unknown model
            stopped = await self._unload(name)
        except GatewayError as exc:
            self.send_gateway_error(exc)
            return
        self.write_json({"status": "unloaded", "models": sorted(set(stopped))})

    async def _unload(self, name: str | None) -> list[str]:
        """Without a model, a key limited to some models unloads those only."""
        if name is not None or self.principal.models is None:
            return await self.manager.unload(name)
        stopped: list[str] = []
        for model in self.views.models_for(self.principal):
            stopped += await self.manager.unload(model.name)
        return stopped


class LoadHandler(GatewayHandler):
    admin_only = True

    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.views = services.views
        self.manager = services.manager

    async def post(self) -> None:
        """``{"model": m, "context": n}``: start the smallest variant holding ``n`` (placement rules apply:
        idle engines may be stopped to make room, busy ones are waited for)."""
        manager = self.manager
        try:
            data = parse_json_object(self.request.body or b"{}").data
            if not isinstance(data.get("model"), str):
                raise BadRequest("body must be a JSON object with a string 'model' (and optional integer 'context')")
            context = data.get("context", 0)
            if isinstance(context, bool) or not isinstance(context, int) or context < 0:
                raise BadRequest("'context' must be a non-negative integer")
            self.model_name = data["model"]
            model = self.views.model(data["model"], self.principal)
            if context > manager.largest_context(model):
                manager.variant_for(model, context)  # raises ContextTooLarge
            async with manager.lease(model, context) as engine:
                record = next(r for r in manager.engines if r.handle is engine)
                view = self.views.engine_view(record)
        except GatewayError as exc:
            self.send_gateway_error(exc)
            return
        self.write_json({"status": "loaded", "engine": view})


class MetricsHandler(GatewayHandler):
    admin_only = True

    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.manager = services.manager
        self.pool = services.pool

    def get(self) -> None:
        manager = self.manager
        self.metrics.refresh(self.live.current.model_names(), manager.engines, manager.waiting)
        self.metrics.refresh_peers(self.pool.views())
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(self.metrics.render())
