"""Read-only routes about models and engines: the model list, one model, health, engine props."""

from __future__ import annotations

from llmgw.errors import GatewayError
from llmgw.server.handlers.base import GatewayHandler
from llmgw.server.services import Services


class HealthHandler(GatewayHandler):
    public = True

    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.views = services.views

    def get(self) -> None:
        health = self.views.health()
        self.write_json(health, 503 if health["status"] == "draining" else 200)


class StateHandler(GatewayHandler):
    """GET /api/state: what this node's peers route by (read-only)."""

    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.views = services.views

    def get(self) -> None:
        """Any key may read it (a peer's needs no admin rights): it lists the models that key may use."""
        self.write_json(self.views.api_state(self.principal))


class ModelsHandler(GatewayHandler):
    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.views = services.views

    def get(self) -> None:
        self.write_json(self.views.models_list(self.principal))


class ModelHandler(GatewayHandler):
    """GET /v1/models/{id}: one model, by name or alias."""

    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.views = services.views

    def get(self, name: str) -> None:
        try:
            self.write_json(self.views.model_view(name, self.principal))
        except GatewayError as exc:
            self.send_gateway_error(exc)


class EngineInfoHandler(GatewayHandler):
    """GET /props: asked of the running engine of ``?model=`` (never started for this), one of the
    key's models. Clients of llama-server read its context and template there."""

    def initialize(self, services: Services, route: str) -> None:
        super().initialize(services, route)
        self.views = services.views
        self.http = services.http

    async def get(self) -> None:
        try:
            base_url = self.views.running_engine_for(self.get_query_argument("model", None), self.principal)
        except GatewayError as exc:
            self.send_gateway_error(exc)
            return
        reply = await self.http.json_exchange(base_url + self.request.path, timeout=30.0)
        self.set_status(reply.status)
        self.set_header("Content-Type", reply.content_type or "application/json")
        self.finish(reply.body)


class SlotsHandler(EngineInfoHandler):
    """GET /slots: what each of the engine's slots holds, prompts included: admin keys only."""

    admin_only = True
