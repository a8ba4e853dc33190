"""``fleet.router.PrefixRouter`` driven the way Serve's handle drives it, without a cluster:
the real router class, Serve's own ``PendingRequest`` and ``RequestMetadata``, replicas
stood in by their ids (the router reads nothing else of a replica)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import ray  # noqa: F401  (no fleet extra: fail loudly; make test installs it)
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve.request_router import PendingRequest, ReplicaID

from engines.types import GenerationRequest
from fleet.router import PrefixRouter

DEPLOYMENT = DeploymentID(name="model-x", app_name="model-x")
ids = itertools.count()


@dataclass
class Replica:
    replica_id: ReplicaID


def replicas(*names: str) -> list[Replica]:
    return [Replica(ReplicaID(n, DEPLOYMENT)) for n in names]


def request(tokens: list[int], method: str = "generate") -> PendingRequest:
    meta = RequestMetadata(request_id="r", internal_request_id=f"req-{next(ids)}",
                           call_method=method)
    return PendingRequest(args=[GenerationRequest(tuple(tokens))], kwargs={}, metadata=meta)


SYS_A, SYS_B = list(range(1000, 1200)), list(range(3000, 3200))


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def router() -> PrefixRouter:
    r = PrefixRouter(deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN)
    r.initialize_state()
    return r


async def route(router: PrefixRouter, pool: list[Replica], pr: PendingRequest,
                finish_first: bool = False) -> str:
    """One request as Serve routes it: the first replica of the first rank offered, then
    the routed/completed callbacks (in Serve's order, or completion first)."""
    ranks = await router.choose_replicas(pool, pr)
    assert len(ranks) == 1  # on a first try the first rank is offered alone
    chosen = ranks[0][0].replica_id
    if finish_first:
        router.on_request_completed(chosen, pr.metadata.internal_request_id)
    router.on_request_routed(pr, chosen, None)
    return chosen.unique_id


async def test_shared_prefix_keeps_to_its_replica_and_load_is_released(
        router: PrefixRouter) -> None:
    pool = replicas("r1", "r2")
    placed: dict[str, set[str]] = {"a": set(), "b": set()}
    for q in range(3):
        for name, system in (("a", SYS_A), ("b", SYS_B)):
            pr = request(system + [q] * 10)
            rid = await route(router, pool, pr)
            placed[name].add(rid)
            router.on_request_completed(ReplicaID(rid, DEPLOYMENT),
                                        pr.metadata.internal_request_id)
    assert placed == {"a": {"r1"}, "b": {"r2"}}


async def test_late_or_early_completion_reports_leave_no_load(router: PrefixRouter
                                                               ) -> None:
    pool = replicas("r1", "r2")
    sys_c = list(range(5000, 5200))
    # a tokenise call Serve reports done only later: r1 must not look busy meanwhile
    assert await route(router, pool, request([1, 2, 3], method="tokenize")) == "r1"
    # generations Serve reports done before it reports them routed
    for q in range(3):
        assert await route(router, pool, request([*SYS_A, q]), finish_first=True) == "r1"
    # two generations of another prefix still running on r2 (the emptier cache)
    assert [await route(router, pool, request([*SYS_B, q])) for q in range(2)] == ["r2"] * 2
    # a third prefix goes to r1, which carries nothing (r2 carries two)
    assert await route(router, pool, request(sys_c)) == "r1"


async def test_busy_holder_gives_way_and_other_calls_go_by_load(router: PrefixRouter
                                                                 ) -> None:
    pool = replicas("r1", "r2")
    # long generations of one prefix, still running: r1 takes them up to the imbalance
    # limit (4 over the idlest), then r2 does
    first = [await route(router, pool, request([*SYS_A, 7])) for _ in range(6)]
    assert first == ["r1"] * 5 + ["r2"]
    # both hold the prefix now: the less loaded of them
    assert await route(router, pool, request([*SYS_A, 8])) == "r2"
    # a tokenise call is not a generation: least loaded, and nothing is recorded
    held = router._index.size("r2")
    assert await route(router, pool, request(SYS_B, method="tokenize")) == "r2"
    assert router._index.size("r2") == held


async def test_first_rank_alone_for_a_few_tries_then_all(router: PrefixRouter) -> None:
    """A preferred replica slow to answer Serve's probe is retried before the others."""
    pool = replicas("r1", "r2")
    await route(router, pool, request(SYS_A))  # r1 holds SYS_A now (and is idle again)
    pr = request(SYS_A)
    offered = [await router.choose_replicas(pool, pr) for _ in range(4)]
    assert [[[r.replica_id.unique_id for r in g] for g in o] for o in offered] == [
        [["r1"]], [["r1"]], [["r1"]], [["r1"], ["r2"]]]
    assert pr.routing_context.should_backoff  # all offered: Serve backs off if all full
