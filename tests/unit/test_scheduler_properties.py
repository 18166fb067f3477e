"""Property tests of the Scheduler: random arrivals, finishes, starts, stops, crashes, loads,
unloads, idle timeouts, measurements and reloads against a simulated runtime, checking after
every step that:

* count and memory never exceed the budget (by declared or measured figures) when a start is
  decided, and at every moment while the limits and figures stay as they were;
* an engine serving requests is never stopped to make room for another;
* no two engines share a port, and no model has two engines (so none is started twice);
* a grant always gives an engine that is ready and big enough;
* every request is answered (granted or failed) or times out: once the world settles, only
  requests that pinned engines leave no room for are still waiting, and the queue timeout
  clears those;
* priority: the queue keeps arrival order within each priority; an interactive request waits
  behind a batch one only once that one has let ``batch_overtakes`` (N) go ahead; and no batch
  request is ever seen with more than N interactive requests that arrived after it ahead of it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from scheduling_world import World, config, model

from llmgw.config import Config, ModelConfig, Priority
from llmgw.runtime import Usage
from llmgw.scheduling.placement import Placement
from llmgw.scheduling.scheduler import EngineRecord, EngineState, Grant, Phase, Ticket

QUEUE_TIMEOUT = 60.0


@st.composite
def worlds(draw: st.DrawFn) -> Config:
    count = draw(st.integers(2, 4))
    budget = draw(st.sampled_from([None, {"total": 1000.0}]))
    models: list[ModelConfig] = []
    for i in range(count):
        contexts = draw(st.sampled_from([(1024,), (1024, 4096)]))
        port = draw(st.sampled_from([1000 + i, 1000 + i, 1000 + i, 1000]))  # sometimes a shared address
        memory: Any = None
        if budget is not None and draw(st.booleans()):
            memory = [{"total": float(draw(st.sampled_from([200, 400, 700])))} for _ in contexts]
        models.append(
            model(
                f"m{i}",
                contexts,
                port=port,
                memory=memory,
                pools=("total",) if budget else (),
                pinned=draw(st.booleans()) and draw(st.booleans()),
                exclusive=draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()),
                idle=draw(st.sampled_from([0.0, 30.0])),
            )
        )
    return config(models, max_engines=draw(st.integers(1, 3)), budget=budget, batch_overtakes=draw(st.integers(0, 3)))


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world: World
        self.tickets: list[Ticket] = []
        self.limits_changed = False
        self.passed_by: dict[int, set[int]] = {}  # batch ticket -> later interactive ones ever seen ahead of it

    @initialize(cfg=worlds())
    def setup(self, cfg: Config) -> None:
        self.world = World.of(cfg)

    @property
    def s(self) -> Any:
        return self.world.scheduler

    def _models(self) -> tuple[ModelConfig, ...]:
        return self.s.config.models  # type: ignore[no-any-return]

    # -- requests ---------------------------------------------------------------------------

    @rule(data=st.data(), need=st.sampled_from([0, 0, 100, 2000, 3000, 9000]), batch=st.booleans())
    def request(self, data: st.DataObject, need: int, batch: bool) -> None:
        m = data.draw(st.sampled_from(self._models()))
        self.tickets.append(self.world.request(m, need, Priority.BATCH if batch else Priority.INTERACTIVE))

    @precondition(lambda self: bool(self.world.granted))
    @rule(data=st.data())
    def finish_request(self, data: st.DataObject) -> None:
        ticket_id = data.draw(st.sampled_from(sorted(self.world.granted)))
        record = self.world.granted.pop(ticket_id)
        self.world.take(self.s.release(record.id, self.world.now))

    @precondition(lambda self: bool(self.world.scheduler.queue))
    @rule(data=st.data())
    def client_leaves(self, data: st.DataObject) -> None:
        ticket = data.draw(st.sampled_from(self.s.queue))
        self.world.take(self.s.cancel(ticket.id, self.world.now))

    @rule(seconds=st.sampled_from([1.0, 31.0, 61.0]))
    def time_passes(self, seconds: float) -> None:
        """Time goes by: idle engines expire; requests past the queue timeout give up, unless their
        engine is starting or the ones in their way are stopping (those have their own timeouts)."""
        self.world.now += seconds
        for record in list(self.s.records):
            self.world.take(self.s.idle_expired(record.id, self.world.now))
        for ticket in list(self.s.queue):
            if self.world.now - ticket.arrived > QUEUE_TIMEOUT and ticket.phase not in (Phase.STARTING, Phase.STOPPING):
                self.world.take(self.s.cancel(ticket.id, self.world.now))

    # -- the runtime ------------------------------------------------------------------------

    @precondition(lambda self: bool(self.world.starting))
    @rule(data=st.data(), ok=st.booleans(), halved=st.booleans())
    def start_ends(self, data: st.DataObject, ok: bool, halved: bool) -> None:
        record: EngineRecord = data.draw(st.sampled_from(self.world.starting))
        n_ctx = record.variant.context // 2 if halved else record.variant.context  # e.g. -np 2
        self.world.finish_start(record, n_ctx, ok=ok or self.s.closed)

    @precondition(lambda self: bool(self.world.stopping))
    @rule(data=st.data())
    def stop_ends(self, data: st.DataObject) -> None:
        self.world.finish_stop(data.draw(st.sampled_from(self.world.stopping)))

    @precondition(lambda self: any(s.state is EngineState.READY for s in self.world.scheduler.records))
    @rule(data=st.data())
    def engine_crashes(self, data: st.DataObject) -> None:
        record = data.draw(st.sampled_from([s for s in self.s.records if s.state is EngineState.READY]))
        self.world.take(self.s.crashed(record.id, self.world.now))

    @precondition(lambda self: any(s.state is EngineState.READY for s in self.world.scheduler.records))
    @rule(data=st.data(), mib=st.sampled_from([100.0, 300.0, 600.0]))
    def engine_measured(self, data: st.DataObject, mib: float) -> None:
        record = data.draw(st.sampled_from([s for s in self.s.records if s.state is EngineState.READY]))
        if self.s.memory.record(record.model, record.variant, Usage(mib)):
            self.limits_changed = True
            self.world.take(self.s.measured(record.id, self.world.now))

    # -- operations -------------------------------------------------------------------------

    @rule(data=st.data(), everything=st.booleans())
    def unload(self, data: st.DataObject, everything: bool) -> None:
        name = None if everything else data.draw(st.sampled_from(self._models())).name
        self.world.take(self.s.unload(name, self.world.now)[1])

    @rule(data=st.data())
    def load(self, data: st.DataObject) -> None:
        """POST /load is a request that gives its engine back as soon as it has it."""
        ticket = self.world.request(data.draw(st.sampled_from(self._models())))
        self.tickets.append(ticket)
        if ticket.id in self.world.granted:
            record = self.world.granted.pop(ticket.id)
            self.world.take(self.s.release(record.id, self.world.now))

    @rule(data=st.data(), max_engines=st.integers(1, 3))
    def reload(self, data: st.DataObject, max_engines: int) -> None:
        """The same models with one of them dropped or changed, and maybe other limits."""
        models = list(self._models())
        victim = data.draw(st.integers(0, len(models) - 1))
        change = data.draw(st.sampled_from(["keep", "drop", "relaunch"]))
        if change == "drop" and len(models) > 1:
            models.pop(victim)
        elif change == "relaunch":
            old = models[victim]
            port = int(old.variants[0].connect.rsplit(":", 1)[1])
            models[victim] = model(old.name, (2048,), port=port, pools=old.variants[0].pools)
        budget = dict(self.s.config.server.memory_budget) or None
        new = config(
            models, max_engines=max_engines, budget=budget, batch_overtakes=self.s.config.server.batch_overtakes
        )
        self.limits_changed = True
        self.world.take(self.s.reload(new, self.world.now))

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def rules_hold(self) -> None:
        if not hasattr(self, "world"):
            return
        self.world.check()
        for effect in self.world.log:
            if isinstance(effect, Grant):
                record, ticket = effect.record, effect.ticket
                assert record.state is EngineState.READY or record.state is EngineState.STOPPING
                assert record.model.name == ticket.model.name
        self.world.log.clear()
        if not self.limits_changed:
            assert Placement(self.s.config).within_budget(self.s.records), [
                (s.model.name, s.need) for s in self.s.records
            ]
        self._queue_order_holds()

    def _queue_order_holds(self) -> None:
        bound = self.s.config.server.batch_overtakes
        queue = self.s.queue
        for place, ahead in enumerate(queue):
            assert ahead.overtaken <= bound
            for behind in queue[place + 1 :]:
                if ahead.priority is behind.priority:
                    assert ahead.id < behind.id, "arrival order within a priority"
                elif ahead.priority is Priority.BATCH:  # a later interactive request behind a batch one
                    assert behind.id > ahead.id and ahead.overtaken == bound, (ahead, behind)
                elif ahead.id > behind.id:  # an interactive request that went ahead of a batch one
                    self.passed_by.setdefault(behind.id, set()).add(ahead.id)
        for ticket in queue:
            if ticket.priority is Priority.BATCH:
                assert len(self.passed_by.get(ticket.id, ())) <= min(ticket.overtaken, bound)

    def teardown(self) -> None:
        if not hasattr(self, "world"):
            return
        w = self.world
        for _ in range(50):  # every request ends, every start and stop completes
            for ticket_id in sorted(w.granted):
                record = w.granted.pop(ticket_id)
                w.take(self.s.release(record.id, w.now))
            if not w.starting and not w.stopping and not w.granted:
                break
            w.settle()
        else:
            raise AssertionError("the world never settled")
        w.check()
        for ticket in self.s.queue:
            assert "pinned" in ticket.blocked_by, (ticket.model.name, ticket.phase, ticket.blocked_by, self.s.records)
        w.now += QUEUE_TIMEOUT + 1
        for ticket in list(self.s.queue):
            w.take(self.s.cancel(ticket.id, w.now))
        assert self.s.queue == []
        for ticket in self.tickets:
            assert ticket.id in w.failed or not any(t.id == ticket.id for t in self.s.queue)


SchedulerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)
test_scheduler_properties = SchedulerMachine.TestCase
