"""``PrefixRouter``: Serve's request router for a language model's replicas.

Serve builds one inside each handle to the deployment (so on the head, in the API
process) from ``request_router_config`` (``fleet.replica.deployment``). For a generation it
asks ``fleet.prefix.rank`` for the replicas to try, best first: those that were already
sent the prompt's prefix, then the least loaded by the generations this router has in
flight on each. Short calls (tokenise, render, info) go by that load alone and are not
counted in it: Serve may report one done only after its caller has moved on, which would
make an idle replica look busy. Serve probes each rank's queue lengths and takes the first
replica with room, backing off while all are full; the first rank is offered alone for the
first few tries (``fleet.prefix.offer``). A request is matched to the replica chosen for
it (no FIFO hand-over to another request), so the decision holds for the request it was
made for.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from engines.types import GenerationRequest
from fleet.prefix import (
    BLOCK_TOKENS,
    MAX_IMBALANCE,
    PrefixIndex,
    offer,
    prefix_blocks,
    rank,
)

CLASS_PATH = "fleet.router:PrefixRouter"
GENERATE = "generate"
EARLY_LIMIT = 1024
TRIES_LIMIT = 4096


def _blocks(pending: PendingRequest | None, block: int) -> tuple[int, ...]:
    if pending is None or pending.metadata.call_method != GENERATE or not pending.args:
        return ()
    req = pending.args[0]
    if not isinstance(req, GenerationRequest):
        return ()
    return prefix_blocks(req.prompt_tokens, block)


class PrefixRouter(RequestRouter):
    """Routes to the replica holding a prompt's prefix, then to the least loaded."""

    def initialize_state(self, block_tokens: int = BLOCK_TOKENS,
                         max_imbalance: int = MAX_IMBALANCE, **_: Any) -> None:
        self._block = block_tokens
        self._imbalance = max_imbalance
        self._index = PrefixIndex()
        self._inflight: dict[str, set[str]] = defaultdict(set)
        # Serve may report a quick call completed before it reports it routed (the
        # completion callback is set first): such (replica, request) pairs wait here,
        # bounded (a request a full replica refused is reported completed, never routed)
        self._early: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._tries: OrderedDict[str, int] = OrderedDict()  # routing attempts per request

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = {rid: len(self._inflight.get(rid, ())) for rid in by_id}
        ranks = rank(_blocks(pending_request, self._block), loads, self._index,
                     max_imbalance=self._imbalance)
        if pending_request is not None:
            request_id = pending_request.metadata.internal_request_id
            attempt = self._tries.pop(request_id, 0)
            self._tries[request_id] = attempt + 1
            while len(self._tries) > TRIES_LIMIT:
                self._tries.popitem(last=False)
            ranks, backoff = offer(ranks, attempt)
            pending_request.routing_context.should_backoff = backoff
        return [[by_id[rid] for rid in group] for group in ranks]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        rid = replica_id.unique_id
        request_id = pending_request.metadata.internal_request_id
        self._tries.pop(request_id, None)
        if pending_request.metadata.call_method != GENERATE:
            return  # a short call (tokenise, render): its load is nil, and Serve may
            #         report it done only after the caller has sent the next one
        if (rid, request_id) in self._early:
            del self._early[rid, request_id]  # it has already finished
        else:
            self._inflight[rid].add(request_id)
        blocks = _blocks(pending_request, self._block)
        if blocks:
            self._index.record(rid, blocks)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str
                             ) -> None:
        rid = replica_id.unique_id
        held = self._inflight.get(rid)
        if held is not None and internal_request_id in held:
            held.discard(internal_request_id)
            return
        self._early[rid, internal_request_id] = None
        while len(self._early) > EARLY_LIMIT:
            self._early.popitem(last=False)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        live = {r.replica_id.unique_id for r in replicas}
        self._index.keep_only(live)
        for gone in [rid for rid in self._inflight if rid not in live]:
            del self._inflight[gone]
