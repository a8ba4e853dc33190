"""Continuous batching over llama.cpp: one scheduler thread, one ``llama_decode`` per step.

Each step builds one batch holding the next token of every generating sequence plus
one chunk of a prompt still being read (chunked prefill, so a long prompt never stalls
the others; ``promptplan`` picks the chunk: the seat running fewest requests first, then
the oldest), decodes it once and samples one token per sequence that asked for logits.
Requests arriving together thus get their first tokens one prompt after another, and one
arriving mid-step waits for a short step, not for a burst's prompts; the step that gives a
colleague's only request its first token leaves the busy seat's decode tokens and prompt
chunks out (``promptplan.colleague_step``). A prompt is read ``prefill_chunk`` tokens at a
time from wherever its reading starts.
Sequence ids are slot numbers; a finished or cancelled sequence's KV cells are dropped
with ``llama_memory_seq_rm`` before the next step.

Determinism: the context keeps one KV stream per slot (``kv_unified=False``). With a
unified cache a sequence's cells are interleaved with other sequences' cells, so the
order in which attention sums its own values depends on its neighbours and greedy output
can drift from the solo result; with one stream per slot a sequence always sees exactly
the cells, in the same order, that it would see alone. On a CPU the build's flash
attention computes each token's row by itself (``tools/llama_source.py`` turns off
ggml's tiled and split-KV kernels, whose sums depend on the micro-batch's shape), and
the weight products are per token too, so a token's logits and cells do not depend on
what shares its step or on how its prompt was cut into chunks: any reused prefix, and
the cells of generated tokens, are the ones a solo run computes.

Packing: with one stream per slot llama.cpp splits a batch into micro-batches of
consecutive sequence ids, so a gap (slots 0 and 2 busy, 1 free) costs a second pass over
the weights. New requests take the lowest free slot, and when a sequence below the
highest busy slot ends, the highest one is moved down into the gap (a copy of its KV
stream), so busy slots are always 0..n-1 and each step is one pass.

Context size: ``n_ctx`` is the total KV budget shared by all slots; each slot (one
request) gets ``n_ctx // slots`` tokens, rounded up to llama.cpp's 256-token padding
and capped at the model's training context. ``info.n_ctx`` reports the per-slot size.

Prefix reuse: a slot keeps its KV cells when its request ends. A new request takes the
free slot whose cells share the longest start with its prompt (the same system prompt,
the earlier turns of the same chat) and reads only the rest; when another slot or the
host-RAM cache (``prefix.HostPrefixCache``, saved states, LRU by bytes) shares more, its
cells are copied or restored into the slot first. A slot's cells are saved to the host
cache before an unrelated prompt overwrites them. Copies go through a state buffer of the
cells in use (``lowlevel.Context.copy_prefix``), never llama.cpp's whole-stream copy. The
reused cells are the ones a solo run computes (see Determinism), so greedy output does
not change; ``Finished.cached_tokens`` says how many prompt tokens were not read again.

Forks: a request whose prompt is exactly a running request's prompt (the ``n`` choices of
one API request, or the same prompt sent twice at once) reads none of it. It copies that
request's cells once they hold the whole prompt and draws its first token from the same
saved logits of the last prompt token, so it starts where a solo run would, exactly. A
free slot remembers its last request's prompt and those logits too, so the same prompt
sent again (a retry) resumes from them.

Logprobs (only for requests that ask: ``GenerationRequest.logprobs``) are the
log-softmax of the raw logits each token was sampled from, before penalties, bias,
grammar and temperature (see ``TokenLogprob``). ``echo`` sends the prompt's tokens first;
with logprobs as well, the request reads its whole prompt itself (no reuse) and asks
llama.cpp for the logits of every prompt position.

Images (a model loaded with its projector, ``projector_path``): a request's prompt holds
one ``IMAGE_TOKEN`` where each of its ``images`` goes. Such a request does not share the
batch while its prompt is read: when it takes its slot (an empty one, nothing reused or
forked) the scheduler decodes its image bytes (``multimodal.Projector``), then evaluates
the whole prompt into the slot by itself, text in chunks and each image through libmtmd,
and samples its first token from the last prompt token's logits; from then on it decodes
one token per step with the others. The image's cells are never offered to another
request (each ``IMAGE_TOKEN`` in the prompt stands for as many positions as the image
takes, and no prefix match passes one), so greedy output depends only on the request.
Reading an image stalls the other sequences for that time (the image encoder runs on the
scheduler thread), as a long prefill would.

Fair share: waiting requests queue per seat (``fairqueue.FairQueue``, deficit round
robin by seat weight, background seats last), so one seat's batch job does not hold
every slot while others wait; and while another seat has been seen in the last
``HEADROOM_S`` seconds and runs nothing, a seat that already runs requests does not take
the last free slot, so that colleague starts at once instead of after a whole generation.
While another seat has been seen in the last ``ACTIVE_S`` seconds or runs a request, a seat
running several reads its prompts ``busy_step_prompt_tokens`` at a time, so a colleague's
request that arrives mid-step waits for a short step.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EventSink, GenerationHandle, LLMEngine
from engines.errors import (
    ContextLengthError,
    EngineClosedError,
    EngineError,
    InvalidRequestError,
    OverloadedError,
)
from engines.llm.fairqueue import FairQueue
from engines.llm.logprobs import log_softmax, token_logprob
from engines.llm.lowlevel import (
    Batch,
    Context,
    ContextConfig,
    Embedder,
    Model,
    Sampler,
    gpu_offload_supported,
    prompt_ids,
)
from engines.llm.multimodal import ImageChunks, Projector
from engines.llm.prefix import MIN_REUSE, HostPrefixCache, Saved, common_prefix
from engines.llm.promptplan import (
    Reading,
    busy_seats,
    colleague_step,
    passed_over,
    prompt_chunks,
)
from engines.llm.prompts import EMBED_CTX, MAX_CHARS_PER_TOKEN, PromptBuilder, PromptMethods
from engines.llm.textstream import TextStream
from engines.types import (
    IMAGE_TOKEN,
    MAX_TOP_LOGPROBS,
    Failed,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    LLMInfo,
    PromptTokens,
    TextDelta,
    TokenLogprob,
)

log = logging.getLogger(__name__)

HEADROOM_S = 30.0  # a seat seen this recently keeps a slot free from other seats' bursts
ACTIVE_S = 10.0  # a seat seen this recently is about: a busy seat's prompts go in short steps


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _Handle(GenerationHandle):
    """Cancellation flag shared between the caller and the scheduler."""

    def __init__(self, wake: threading.Condition) -> None:
        self._wake = wake
        self.cancelled = False

    def cancel(self) -> None:
        with self._wake:
            self.cancelled = True
            self._wake.notify_all()


@dataclass(eq=False)
class _Seq:
    """One request, from the queue through its slot to its last event."""

    id: int
    prompt: list[int]
    max_tokens: int
    request: GenerationRequest
    sink: EventSink
    handle: _Handle
    stream: TextStream
    slot: int = -1
    sampler: Sampler | None = None
    n_past: int = 0  # tokens of this sequence already in the KV cache
    next_token: int | None = None  # sampled, not yet decoded
    generated: list[int] = field(default_factory=list)
    cached: int = 0  # prompt tokens reused from a cache, not read
    reuse: tuple = ()  # how the slot gets its prefix: see _plan_slot
    follows: tuple = ()  # (leader _Seq, n): copy the leader's first n cells once computed
    n_generated: int = 0
    unsent_tokens: int = 0  # tokens whose text the stream is still holding back
    unsent_logprobs: list[TokenLogprob] = field(default_factory=list)  # of those tokens
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # echo + logprobs
    last_logits: np.ndarray | None = None  # raw logits after the last prompt token
    deferred: bool = False
    passed: int = 0  # steps in which a younger prompt of its seat was read before it
    done: bool = False

    @property
    def has_images(self) -> bool:
        return bool(self.request.images)

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)

    @property
    def reads_prompt_logits(self) -> bool:
        """Echo with logprobs: every prompt position's logits are needed."""
        return self.request.echo and self.request.logprobs is not None

    def kv_tokens(self) -> list[int]:
        """The tokens whose cells this sequence has in its slot (positions 0..n_past-1)."""
        return (self.prompt + self.generated)[: self.n_past]

    def shared_with(self, prompt: list[int]) -> int:
        """Length of the common start of ``prompt`` and this sequence's prompt followed by
        what it generated (without building that list)."""
        n = common_prefix(prompt, self.prompt)
        if self.has_images:  # the cells up to the first image only (see _release)
            return min(n, self.prompt.index(IMAGE_TOKEN))
        if n == len(self.prompt) and self.generated:
            n += common_prefix(prompt[n:], self.generated)
        return n


class BatchedLlamaEngine(PromptMethods, LLMEngine):
    """A GGUF model served to up to ``slots`` concurrent generations by continuous batching.

    ``n_ctx`` is the total KV cache across slots (see the module docstring); ``max_queue``
    bounds the requests waiting for a slot; ``prefill_chunk`` bounds the prompt tokens
    read per step and request; ``step_prompt_tokens`` bounds those one step reads in all
    (default half a chunk; a longer chunk is the only one its step reads);
    ``busy_step_prompt_tokens`` bounds both for a seat running several requests while
    another seat is about (``promptplan.busy_seats``);
    ``use_extra_bufts=False`` is the safe configuration (see ``lowlevel.Model``);
    ``prefix_cache_bytes`` bounds the host-RAM prefix cache (0: off);
    ``prefix_reuse=False`` reads every prompt whole (for comparisons).
    """

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 8192,
        slots: int = 8,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        max_queue: int = 64,
        prefill_chunk: int = 64,
        use_extra_bufts: bool = True,
        prefix_cache_bytes: int = 256 << 20,
        prefix_reuse: bool = True,
        step_tokens: int | None = None,
        step_prompt_tokens: int | None = None,
        busy_step_prompt_tokens: int = 8,
        projector_path: Path | str | None = None,
    ) -> None:
        if (slots < 1 or max_queue < 0 or prefill_chunk < 1 or n_ctx < slots
                or busy_step_prompt_tokens < 1):
            raise ValueError("need slots >= 1, max_queue >= 0, prefill_chunk >= 1, "
                             "n_ctx >= slots, busy_step_prompt_tokens >= 1")
        if n_gpu_layers is None:
            n_gpu_layers = -1 if gpu_offload_supported() else 0
        self._threads = n_threads or _default_threads()
        self._slots = slots
        self._max_queue = max_queue
        self._prefill_chunk = prefill_chunk
        # Prompt tokens one step reads: half a chunk (a longer chunk is read by itself), so
        # first tokens come one prompt after another and a request arriving mid-step waits
        # for a short step (see promptplan). Against one whole chunk, measured on 2 cores:
        # 16 short questions at once, TTFT p50 1.81 -> 1.33 s at the same tokens/s; a
        # colleague's TTFT p95 during a 64-request burst 0.49 -> 0.38 s.
        self._step_prompt = step_prompt_tokens or max(1, prefill_chunk // 2)
        # ... and of a busy seat while another seat is about (promptplan.busy_seats). Box-only
        # runs of llm_peer's noisy workload: seat B's TTFT p95 beside seat A's 64-request
        # burst 0.143 -> 0.116 s (medians of 11 and 8 rounds); seat A's tokens/s 129 -> 118-124.
        self._busy_step_prompt = busy_step_prompt_tokens
        self._n_gpu_layers = n_gpu_layers
        # Tokens one step may decode: every slot's next token or prompt chunk.
        step_tokens = step_tokens or slots * prefill_chunk + slots
        self._model = Model(Path(model_path), n_gpu_layers=n_gpu_layers,
                            use_extra_bufts=use_extra_bufts)
        try:
            per_slot = min(max(1, n_ctx // slots), self._model.n_ctx_train)
            self._ctx = Context(self._model, ContextConfig(
                n_ctx=per_slot * slots,
                n_batch=step_tokens,
                n_seq_max=slots,
                n_threads=self._threads,
                # CPU: flash attention on, so rows are computed alone (see Determinism);
                # on a GPU llama.cpp decides.
                flash_attn=True if n_gpu_layers == 0 else None,
            ))
            self._batch = Batch(step_tokens)
            self._projector = (None if projector_path is None else Projector(
                Path(projector_path), self._model, n_threads=self._threads,
                use_gpu=n_gpu_layers != 0 and gpu_offload_supported()))
        except BaseException:
            self._model.close()
            raise
        self._n_ctx_slot = min(self._ctx.n_ctx_seq, self._model.n_ctx_train)
        self._info = LLMInfo(
            n_ctx=self._n_ctx_slot,
            n_ctx_train=self._model.n_ctx_train,
            n_embd=self._model.n_embd,
            backend="cuda" if n_gpu_layers != 0 and gpu_offload_supported() else "cpu",
            n_gpu_layers=n_gpu_layers,
            slots=slots,
            chat_template=self._model.meta("tokenizer.chat_template"),
            images=self._projector is not None,
        )
        self._cond = threading.Condition()
        self._queue: FairQueue[_Seq] = FairQueue()  # guarded by _cond
        self._closing = False  # guarded by _cond
        self._running: dict[int, _Seq] = {}  # slot -> seq; scheduler thread only
        self._cached: list[list[int]] = [[] for _ in range(slots)]  # free slots' KV tokens
        # free slots' last request: (its prompt, the logits after it), for a repeat of it
        self._last: list[tuple[list[int], np.ndarray] | None] = [None] * slots
        self._seen: dict[str, float] = {}  # seat -> last submit (monotonic); under _cond
        self._reuse = prefix_reuse
        self._host = HostPrefixCache(prefix_cache_bytes if prefix_reuse else 0)
        self._ids = itertools.count(1)
        self._stats = {
            "steps": 0.0, "last_batch_tokens": 0.0, "last_step_ms": 0.0, "deferred": 0.0,
            "requests_total": 0.0, "requests_failed": 0.0, "requests_cancelled": 0.0,
            "prompt_tokens_total": 0.0, "completion_tokens_total": 0.0, "decode_seconds": 0.0,
            "slot_moves": 0.0, "prefix_hits": 0.0, "prefix_misses": 0.0,
            "prefix_cached_tokens_total": 0.0, "prefix_host_restores": 0.0,
            "prefix_host_saves": 0.0, "prefix_forks": 0.0, "decode_waits": 0.0,
        }
        self._decodes_waited = False  # the last step left the running requests' tokens out
        self._active: set[str] = set()  # seats seen in the last ACTIVE_S (scheduler's copy)
        self._embed_lock = threading.Lock()  # serialises embed(); taken before _life_lock
        self._life_lock = threading.Lock()  # held by callers of the model outside the scheduler
        self._prompts = PromptBuilder(self._model, self._n_ctx_slot, self._life_lock)
        self._embedder: Embedder | None = None  # created on first embed()
        self._thread = threading.Thread(
            target=self._run, name=f"llm-batched-{self._model.path.stem}", daemon=True
        )
        self._thread.start()
        log.info(
            "loaded %s: %d slots x %d tokens, %d threads, n_gpu_layers=%d",
            self._model.path.name, slots, self._n_ctx_slot, self._threads, n_gpu_layers,
        )

    # ----------------------------------------------------------------- public API

    def vision_chat_tokens(self, messages: Sequence[dict[str, Any]],
                           tools: Sequence[dict[str, Any]] | None, marker: str) -> list[int]:
        """``chat_tokens`` where each ``marker`` in message content becomes ``IMAGE_TOKEN``
        (the marker is the caller's, random per request, so typed text cannot forge one)."""
        if self._projector is None:
            raise InvalidRequestError(f"model {self._model.path.stem!r} does not take images "
                                      "(it has no projector)")
        return self._prompts.chat_ids(messages, tools, marker)

    def submit(self, request: GenerationRequest, sink: EventSink) -> GenerationHandle:
        if request.images:
            if self._projector is None:
                raise InvalidRequestError("this model does not take images")
            if request.echo:
                raise InvalidRequestError("'echo' cannot repeat a prompt that holds images")
            places = sum(1 for t in request.prompt_tokens if t == IMAGE_TOKEN)
            if places != len(request.images):
                raise InvalidRequestError(f"the prompt has {places} image places for "
                                          f"{len(request.images)} images")
            prompt_ids(self._model, [t for t in request.prompt_tokens if t != IMAGE_TOKEN])
            prompt = list(request.prompt_tokens)
        else:
            prompt = prompt_ids(self._model, request.prompt_tokens)
        if not prompt:
            raise InvalidRequestError("the prompt is empty")
        s = request.sampling
        if s.max_tokens is not None and s.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1")
        if request.logprobs is not None and not 0 <= request.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(f"logprobs must be within 0..{MAX_TOP_LOGPROBS}")
        room = self._n_ctx_slot - len(prompt)
        if room < 1 or (s.max_tokens is not None and s.max_tokens > room):
            raise ContextLengthError(len(prompt), self._n_ctx_slot, s.max_tokens)
        handle = _Handle(self._cond)
        seq = _Seq(
            id=next(self._ids),
            prompt=prompt,
            max_tokens=s.max_tokens if s.max_tokens is not None else room,
            request=request,
            sink=sink,
            handle=handle,
            stream=TextStream(stop=tuple(x for x in s.stop if x)),
        )
        with self._cond:
            if self._closing:
                raise EngineClosedError("the model is being unloaded")
            if len(self._queue) >= self._max_queue:
                raise OverloadedError(
                    f"{len(self._queue)} requests are already waiting for this model",
                    retry_after=self._retry_after(),
                )
            self._queue.push(seq, request.seat, weight=request.seat_weight,
                             background=request.background)
            if request.seat:  # not the box's own requests (a worker's load self-test)
                self._seen[request.seat] = time.monotonic()
            if len(self._seen) > 4096:  # forget seats quiet for long
                cutoff = time.monotonic() - HEADROOM_S
                self._seen = {k: t for k, t in self._seen.items() if t > cutoff}
            self._cond.notify_all()
        return handle

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Mean-pooled hidden states of the chat model (a weak sentence embedding: the
        README compares it with the embedding pack)."""
        with self._embed_lock:
            if self._model.ptr is None:
                raise EngineClosedError("the model is unloaded")
            if self._embedder is None:
                self._embedder = Embedder(self._model, n_ctx=EMBED_CTX, n_threads=self._threads)
            ids = self._embedder.input_ids(self._model, texts, MAX_CHARS_PER_TOKEN)
            return self._embedder.embed_ids(ids)

    def stats(self) -> dict[str, float]:
        with self._cond:
            queue = len(self._queue)
        return {
            **self._stats,
            "queue_depth": float(queue),
            "active_slots": float(len(self._running)),
            "slots": float(self._slots),
            "prefix_host_bytes": float(self._host.bytes),
            "prefix_host_entries": float(len(self._host)),
        }

    def waiting(self) -> dict[str, int]:
        with self._cond:
            return self._queue.waiting()

    def close(self) -> None:
        """Stop the scheduler; it fails what is pending and frees the model on its way out.

        Called from a sink (the scheduler thread itself) it returns at once and the
        scheduler stops after the current step.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # ----------------------------------------------------------------- scheduler

    def _retry_after(self) -> float:
        step = self._stats["last_step_ms"] / 1000.0 or 0.05
        return round(max(1.0, step * len(self._queue) / self._slots * 16), 1)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closing and not self._queue and not self._running:
                        self._cond.wait()
                    if self._closing:
                        return
                    admitted, dropped = self._take_from_queue()
                for seq in dropped:
                    self._finish(seq, "cancelled")
                for seq in admitted:
                    self._start(seq)
                for seq in list(self._running.values()):
                    if seq.handle.cancelled:
                        self._finish(seq, "cancelled")
                self._pack()
                self._join_leaders()
                if self._running:
                    self._step()
        except BaseException as exc:  # keep the engine's promise: every sink gets an end
            log.exception("LLM scheduler crashed")
            for seq in list(self._running.values()):
                self._fail(seq, EngineError(f"the LLM scheduler crashed: {exc}"))
        finally:
            self._shutdown()

    def _running_per_seat(self) -> Counter[str]:
        """How many requests each seat runs now (admission's headroom rule and the order
        prompt chunks are read in both go by it)."""
        return Counter(s.request.seat for s in self._running.values())

    def _take_from_queue(self) -> tuple[list[_Seq], list[_Seq]]:
        """Under the lock: pull cancelled and admissible requests off the queue."""
        dropped = self._queue.remove_where(lambda s: s.handle.cancelled)
        admitted: list[_Seq] = []
        free = [i for i in range(self._slots) if i not in self._running]
        donors: set[int] = set()  # copied from this round: nobody may overwrite them now
        running = self._running_per_seat()
        now = time.monotonic()
        recent = {seat for seat, t in self._seen.items() if now - t < HEADROOM_S}
        self._active = {seat for seat in recent if now - self._seen[seat] < ACTIVE_S}

        def eligible(seat: str) -> bool:
            # The last free slot is kept for another seat seen lately that runs nothing,
            # so one seat's burst cannot make a colleague wait for a whole generation.
            if len(free) > 1 or not running[seat] or self._slots < 2:
                return True
            return not any(other != seat and not running[other] for other in recent)

        while True:
            choices = [i for i in free if i not in donors]
            seq = self._queue.pop(eligible) if choices else None
            if seq is None:
                break
            self._plan_slot(seq, choices)
            if seq.reuse and seq.reuse[0] == "copy":
                donors.add(seq.reuse[1])
            free.remove(seq.slot)
            running[seq.request.seat] += 1
            self._running[seq.slot] = seq
            admitted.append(seq)
        for seq in self._queue:
            if not seq.deferred:
                seq.deferred = True
                self._stats["deferred"] += 1
        return admitted, dropped

    def _plan_slot(self, seq: _Seq, free: list[int]) -> None:
        """Pick ``seq``'s slot among ``free`` (ascending) and where its prefix comes from.

        ``seq.reuse`` is ``("slot", n)`` (the slot's own cells), ``("copy", donor, n)``
        (another slot's cells), ``("host", saved, n)`` (a saved state), ``("fork", twin)``
        or ``("follow", leader, n)`` (see ``_twin``), ``("resume", logits)`` (the slot's
        last request had this very prompt) or ``()``. A free slot whose cells go
        on past the shared prefix (another chat's later turns) is copied from rather than
        overwritten while a cold slot is free.
        """
        prompt = seq.prompt
        cold = [i for i in free if not self._cached[i]]
        if seq.has_images:  # read alone into an empty slot (see the module docstring)
            seq.slot, seq.reuse = (cold[0] if cold else free[0]), ()
            return
        if not self._reuse or seq.reads_prompt_logits:  # the latter needs every position
            seq.slot, seq.reuse = (cold[0] if cold and self._reuse else free[0]), ()
            return
        twin = self._twin(prompt)
        if twin is not None:
            seq.slot = cold[0] if cold else free[0]
            seq.reuse = (("fork", twin) if twin.last_logits is not None
                         else ("follow", twin, len(prompt)))
            return
        for i in free:  # the same prompt again, after its request ended: resume from it
            last = self._last[i]
            if last is not None and last[0] == prompt:
                seq.slot, seq.reuse = i, ("resume", last[1])
                return

        def usable(shared: int) -> int:
            # Any prefix is exact (see Determinism); the last token is always read, its
            # logits give the first sampled token.
            return max(0, min(shared, len(prompt) - 1))

        own_slot, own = free[0], 0
        for i in free:
            n = usable(common_prefix(prompt, self._cached[i]))
            if n > own:
                own_slot, own = i, n
        # Running sequences: cells they hold now (a donor), or will hold once they have
        # read their prompt (a leader: requests that arrived together wait for its cells
        # instead of each reading the shared prefix).
        donor, from_donor, leader, lead = -1, 0, None, 0
        for slot, other in self._running.items():
            shared = other.shared_with(prompt)
            n = usable(min(shared, other.n_past))
            if n > from_donor:
                donor, from_donor = slot, n
            n = usable(min(shared, len(other.prompt)))
            if n > lead and other.n_past < n:
                leader, lead = other, n
        from_host, saved = self._host.best(prompt) if self._host.capacity else (0, None)
        from_host = usable(from_host)
        best = max(own, from_donor, from_host)
        if leader is not None and lead >= best + MIN_REUSE:
            seq.slot, seq.reuse = (cold[0] if cold else free[0]), ("follow", leader, lead)
            return
        if (best >= MIN_REUSE and own == best) or (own > 0 and best < MIN_REUSE):
            if own >= MIN_REUSE and cold and len(self._cached[own_slot]) - own >= MIN_REUSE:
                seq.slot, seq.reuse = cold[0], ("copy", own_slot, own)
            else:
                seq.slot, seq.reuse = own_slot, ("slot", own)
            return
        # a slot that holds nothing worth keeping, lowest first (keeps busy slots packed)
        seq.slot = cold[0] if cold else free[0]
        if best >= MIN_REUSE and from_donor == best:
            seq.reuse = ("copy", donor, from_donor)
        elif best >= MIN_REUSE and saved is not None:
            seq.reuse = ("host", saved, from_host)
        else:
            seq.reuse = ()

    def _twin(self, prompt: list[int]) -> _Seq | None:
        """A running request with exactly this prompt that has read it or is reading it
        (not one still waiting for a leader itself): a new request forks from it."""
        for other in self._running.values():
            if (not other.done and not other.has_images and len(other.prompt) == len(prompt)
                    and other.prompt == prompt
                    and (other.last_logits is not None or not other.follows)):
                return other
        return None

    def _save_to_host(self, slot: int, keep: int = 0) -> None:
        """Before a free slot's cells beyond ``keep`` are overwritten: save them if worth it
        (as much as a restore would take: a short question's cells are worth it too, the
        same question asked again reads only what changed; saving 80 tokens' cells takes
        0.7 ms on 2 cores)."""
        tokens = self._cached[slot]
        if self._host.capacity and len(tokens) - keep >= MIN_REUSE:
            state = self._ctx.save(slot)
            if self._host.put(tokens, state):
                self._stats["prefix_host_saves"] += 1
        self._cached[slot] = []
        self._last[slot] = None

    def _load_prefix(self, seq: _Seq) -> int:
        """Put ``seq``'s reusable prefix into its slot; return how many tokens it holds."""
        slot, reuse = seq.slot, seq.reuse
        kind = reuse[0] if reuse else ""
        if kind == "slot":
            n = reuse[1]
            self._save_to_host(slot, keep=n)
            self._ctx.trim(slot, n)
            return n
        self._save_to_host(slot)
        if kind == "copy":
            self._ctx.copy_prefix(reuse[1], slot, reuse[2])
            return int(reuse[2])
        if kind == "follow":
            self._ctx.forget(slot)
            seq.follows = (reuse[1], reuse[2])
            return 0
        if kind == "resume":
            n = len(seq.prompt)
            self._save_to_host(slot, keep=n)
            self._ctx.trim(slot, n)
            seq.last_logits = reuse[1]
            return n
        if kind == "fork":
            twin: _Seq = reuse[1]
            if self._running.get(twin.slot) is twin and twin.last_logits is not None:
                self._ctx.copy_prefix(twin.slot, slot, len(seq.prompt))
                seq.last_logits = twin.last_logits
                return len(seq.prompt)
        if kind == "host":
            saved: Saved = reuse[1]
            if self._ctx.restore(slot, saved.state):
                self._ctx.trim(slot, reuse[2])
                self._stats["prefix_host_restores"] += 1
                return int(reuse[2])
            log.warning("a saved prefix of %d tokens could not be restored", len(saved.tokens))
        self._ctx.forget(slot)
        return 0

    def _join_leaders(self) -> None:
        """Followers whose leader has computed the shared prefix copy its cells now; a
        follower whose leader ended first reads its prompt itself."""
        for seq in list(self._running.values()):
            if not seq.follows:
                continue
            leader, n = seq.follows
            if leader.done or self._running.get(leader.slot) is not leader:
                seq.follows = ()  # the leader is gone: read the prompt alone
                self._count_reuse(seq)
            elif leader.n_past >= n and (n < len(seq.prompt) or leader.last_logits is not None):
                self._ctx.copy_prefix(leader.slot, seq.slot, n)
                seq.n_past = seq.cached = n
                seq.follows = ()
                self._count_reuse(seq)
                if not seq.prefilling:  # a fork: the whole prompt, and its last logits
                    seq.last_logits = leader.last_logits
                    self._stats["prefix_forks"] += 1
                    self._advance(seq, None)

    def _count_reuse(self, seq: _Seq) -> None:
        """Count a request's prefix hit or miss once, when its prefix is settled."""
        self._stats["prefix_hits" if seq.cached else "prefix_misses"] += 1
        self._stats["prefix_cached_tokens_total"] += seq.cached

    def _pack(self) -> None:
        """Move the highest busy slots down into gaps, so busy slots are 0..n-1."""
        while self._running:
            top = max(self._running)
            gap = next((i for i in range(self._slots) if i not in self._running), self._slots)
            if gap > top:
                return
            seq = self._running.pop(top)
            self._save_to_host(gap)  # the gap's cells are about to be overwritten
            if seq.n_past:
                self._ctx.move(top, gap)
            else:
                self._ctx.forget(top)
                self._ctx.forget(gap)
            self._cached[top] = []
            self._last[top] = None
            seq.slot = gap
            self._running[gap] = seq
            self._stats["slot_moves"] += 1

    def _start(self, seq: _Seq) -> None:
        s = seq.request.sampling
        self._stats["requests_total"] += 1
        try:
            seq.sampler = Sampler(
                self._model, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                grammar=s.grammar, grammar_triggers=s.grammar_triggers,
                presence_penalty=s.presence_penalty,
                frequency_penalty=s.frequency_penalty, logit_bias=s.logit_bias,
                repetition_penalty=s.repetition_penalty,
            )
        except EngineError as exc:
            self._fail(seq, exc)
            return
        seq.n_past = seq.cached = self._load_prefix(seq)
        if not seq.follows:  # a follower is counted when it joins its leader
            self._count_reuse(seq)
        if seq.has_images:
            self._read_with_images(seq)
            return
        if seq.request.echo and seq.request.logprobs is None:
            self._emit(seq, PromptTokens(tuple(
                TokenLogprob(t, self._prompt_piece(seq, i)) for i, t in enumerate(seq.prompt))))
            if seq.done:
                return
        if not seq.prefilling and not seq.follows:  # a fork: sample from the twin's logits
            self._stats["prefix_forks"] += 1
            self._advance(seq, None)

    def _read_with_images(self, seq: _Seq) -> None:
        """Prepare ``seq``'s images, read its whole prompt into its slot alone and sample
        its first token (see the module docstring)."""
        assert self._projector is not None
        images: list[ImageChunks] = []
        try:
            for data in seq.request.images:
                images.append(self._projector.prepare(data))
            parts = _split_images(seq.prompt)
            expanded: list[int] = []
            at = 0
            for part in parts:
                if part is None:
                    expanded += [IMAGE_TOKEN] * images[at].n_pos
                    at += 1
                else:
                    expanded += part
            s = seq.request.sampling
            room = self._n_ctx_slot - len(expanded)
            if room < 1 or (s.max_tokens is not None and s.max_tokens > room):
                raise ContextLengthError(len(expanded), self._n_ctx_slot, s.max_tokens)
            if expanded[-1] == IMAGE_TOKEN:
                raise InvalidRequestError("a prompt cannot end with an image")
            seq.prompt = expanded
            seq.max_tokens = s.max_tokens if s.max_tokens is not None else room
            t0 = time.perf_counter()
            pos, at, last = 0, 0, -1
            for part in parts:
                if part is None:
                    pos = self._projector.evaluate(self._ctx, images[at], pos, seq.slot)
                    at += 1
                    continue
                start = pos
                while pos < start + len(part):
                    end = min(start + len(part), pos + self._prefill_chunk)
                    self._batch.clear()
                    for p in range(pos, end):
                        last = self._batch.add(part[p - start], p, seq.slot,
                                               p == len(expanded) - 1)
                    self._ctx.decode(self._batch)
                    pos = end
            self._stats["decode_seconds"] += time.perf_counter() - t0
            self._stats["prompt_tokens_total"] += len(expanded)
            seq.n_past = len(expanded)
            seq.last_logits = self._ctx.logits(last).copy()
        except EngineError as exc:
            self._fail(seq, exc)
            return
        finally:
            for image in images:
                self._projector.release(image)
        self._advance(seq, None)

    def _prompt_piece(self, seq: _Seq, i: int) -> bytes:
        """The bytes an echoed prompt token stands for; a BOS the tokenizer put first
        echoes as nothing (the client did not send it)."""
        token = seq.prompt[i]
        if i == 0 and self._model.add_bos and token == self._model.bos:
            return b""
        return self._model.piece(token)

    def _plan(self) -> list[tuple[_Seq, int]]:
        """How many tokens each running sequence puts into this step's batch."""
        budget = self._batch.capacity - sum(1 for s in self._running.values() if not s.prefilling)
        take: dict[int, int] = {}
        readings: list[Reading] = []
        load = self._running_per_seat()
        busy = busy_seats(load, self._active)
        cap = min(self._step_prompt, self._busy_step_prompt) if busy else self._step_prompt
        for seq in self._running.values():
            if seq.follows:
                continue  # waits for its leader's cells
            if seq.prefilling:
                size = cap if seq.request.seat in busy else self._prefill_chunk
                end = min(len(seq.prompt), seq.n_past + size)
                readings.append(Reading(seq.slot, seq.request.seat, seq.id, end - seq.n_past,
                                        end == len(seq.prompt), seq.passed))
            else:
                take[seq.slot] = 1
        waited, self._decodes_waited = self._decodes_waited, False
        if readings:
            chosen = prompt_chunks(readings, budget, load, cap)
            alone = colleague_step(chosen, load, waited)
            if alone is not None:  # a colleague's first token first
                take, chosen = {}, alone
                self._decodes_waited = True
                self._stats["decode_waits"] += 1
            for r in passed_over(readings, chosen):
                self._running[r.key].passed += 1
            for r in chosen:
                take[r.key] = r.chunk
        return [(self._running[slot], n) for slot, n in sorted(take.items()) if n > 0]

    def _step(self) -> None:
        batch = self._batch
        batch.clear()
        wants: list[tuple[_Seq, int]] = []
        plan = self._plan()
        if not plan:
            return
        prompt_outputs: list[tuple[_Seq, int, int]] = []  # (seq, position, batch index)
        for seq, n in plan:
            if seq.prefilling:
                end = seq.n_past + n
                every = seq.reads_prompt_logits
                for pos in range(seq.n_past, end):
                    last = pos == len(seq.prompt) - 1
                    i = batch.add(seq.prompt[pos], pos, seq.slot, last or every)
                    if last:
                        wants.append((seq, i))
                    elif every:
                        prompt_outputs.append((seq, pos, i))
            else:
                assert seq.next_token is not None
                wants.append((seq, batch.add(seq.next_token, seq.n_past, seq.slot, True)))
        t0 = time.perf_counter()
        try:
            self._ctx.decode(batch)
        except EngineError as exc:
            log.error("decode of %d tokens failed: %s", len(batch), exc)
            for seq, _ in plan:
                self._fail(seq, exc)
            return
        dt = time.perf_counter() - t0
        st = self._stats
        st["steps"] += 1
        st["last_batch_tokens"] = float(len(batch))
        st["last_step_ms"] = dt * 1000.0
        st["decode_seconds"] += dt
        for seq, n in plan:
            if seq.prefilling:
                st["prompt_tokens_total"] += n
            seq.n_past += n
        for seq, pos, index in prompt_outputs:  # logits at pos: how likely token pos + 1 was
            assert seq.request.logprobs is not None
            seq.prompt_logprobs.append(token_logprob(
                log_softmax(self._ctx.logits(index)), seq.prompt[pos + 1],
                seq.request.logprobs, self._model.piece))
        for seq, index in wants:
            self._advance(seq, index)

    def _advance(self, seq: _Seq, index: int | None) -> None:
        """Sample the next token of ``seq`` from batch entry ``index`` (None: a fork's
        first token, from the saved logits) and decide whether it goes on."""
        assert seq.sampler is not None
        if index is not None and seq.last_logits is None:  # the prompt's last token
            seq.last_logits = self._ctx.logits(index).copy()
            if seq.reads_prompt_logits:
                first = TokenLogprob(seq.prompt[0], self._prompt_piece(seq, 0))
                self._emit(seq, PromptTokens((first, *seq.prompt_logprobs)))
                seq.prompt_logprobs = []
                if seq.done:
                    return
        k = seq.request.logprobs
        if index is None:
            assert seq.last_logits is not None
            logprobs = log_softmax(seq.last_logits) if k is not None else None
            token = seq.sampler.sample_logits(seq.last_logits)
        else:  # computed before sampling: the raw logits, whatever the sampler does to them
            logprobs = log_softmax(self._ctx.logits(index)) if k is not None else None
            token = seq.sampler.sample(self._ctx, index)
        if self._model.is_eog(token):
            self._finish(seq, "stop")
            return
        seq.n_generated += 1
        seq.generated.append(token)
        self._stats["completion_tokens_total"] += 1
        seq.unsent_tokens += 1
        if logprobs is not None and k is not None:
            seq.unsent_logprobs.append(token_logprob(logprobs, token, k, self._model.piece))
        text = seq.stream.push(self._model.piece(token))
        if text:
            self._emit(seq, TextDelta(text, seq.unsent_tokens, tuple(seq.unsent_logprobs)))
            seq.unsent_tokens = 0
            seq.unsent_logprobs = []
        if seq.done:  # the sink raised
            return
        if seq.stream.stopped:
            self._finish(seq, "stop")
        elif seq.n_generated >= seq.max_tokens or seq.n_past >= self._n_ctx_slot:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    # ----------------------------------------------------------------- endings

    def _release(self, seq: _Seq, keep_cells: bool = True) -> None:
        seq.done = True
        if seq.slot >= 0 and self._running.get(seq.slot) is seq:
            del self._running[seq.slot]
            self._last[seq.slot] = None
            if keep_cells and seq.has_images:  # the text before the first image only
                self._cached[seq.slot] = seq.prompt[:seq.prompt.index(IMAGE_TOKEN)]
                self._ctx.trim(seq.slot, len(self._cached[seq.slot]))
            elif keep_cells:  # the cells stay for a later request with the same start
                self._cached[seq.slot] = seq.kv_tokens()
                if seq.last_logits is not None and seq.n_past >= len(seq.prompt):
                    self._last[seq.slot] = (seq.prompt, seq.last_logits)
            else:
                self._cached[seq.slot] = []
                self._ctx.forget(seq.slot)
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        seq.last_logits = None

    def _finish(self, seq: _Seq, reason: FinishReason) -> None:
        if seq.done:
            return
        tail = seq.stream.flush() if reason != "cancelled" else ""
        self._release(seq)
        if reason == "cancelled":
            self._stats["requests_cancelled"] += 1
        if tail or (seq.unsent_logprobs and reason != "cancelled"):
            self._deliver(seq, TextDelta(tail, seq.unsent_tokens, tuple(seq.unsent_logprobs)))
        self._deliver(seq, Finished(reason, len(seq.prompt), seq.n_generated, seq.cached))

    def _fail(self, seq: _Seq, error: Exception) -> None:
        if seq.done:
            return
        self._release(seq, keep_cells=False)  # a failed decode may have left them half-done
        self._stats["requests_failed"] += 1
        self._deliver(seq, Failed(error))

    def _emit(self, seq: _Seq, event: GenerationEvent) -> None:
        """Send a mid-stream event; a sink that raises is treated as a cancelled client."""
        if not self._deliver(seq, event):
            self._release(seq)
            self._stats["requests_cancelled"] += 1

    def _deliver(self, seq: _Seq, event: GenerationEvent) -> bool:
        try:
            seq.sink(event)
            return True
        except Exception:
            log.exception("event sink of request %d raised; dropping the request", seq.id)
            return False

    def _shutdown(self) -> None:
        with self._cond:
            self._closing = True
            queued = self._queue.drain()
        closed = EngineClosedError("the model was unloaded before the request finished")
        for seq in [*self._running.values(), *queued]:
            self._fail(seq, closed)
        self._batch.close()
        if self._projector is not None:
            self._projector.close()
        self._ctx.close()
        with self._embed_lock:
            if self._embedder is not None:
                self._embedder.close()
                self._embedder = None
            with self._life_lock:
                self._model.close()
        log.info("unloaded %s", self._model.path.name)


def _split_images(prompt: list[int]) -> list[list[int] | None]:
    """The prompt's text runs, with None for each ``IMAGE_TOKEN`` (one image each)."""
    out: list[list[int] | None] = []
    for token in prompt:
        if token == IMAGE_TOKEN:
            out.append(None)
        elif out and out[-1] is not None:
            out[-1].append(token)  # type: ignore[union-attr]
        else:
            out.append([token])
    return out
