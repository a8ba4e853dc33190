"""Prefix reuse and fair share in the batched engine, on the real SmolLM2 GGUF.

Cached output must equal uncached output for greedy requests, whether the prefix comes
from the slot itself, another slot, or the host-RAM cache; a prefix evicted from RAM is
read again correctly. The queue keeps each seat's order and serves seats fairly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.llm.batched import BatchedLlamaEngine
from engines.llm.prefix import common_prefix
from engines.types import Finished, GenerationRequest, Sampling
from tests.engines.llm.test_batched import THREADS, Collector

pytestmark = pytest.mark.slow
CHUNK = 32  # prefill chunk

SYSTEM = ("You are the help desk assistant of ACME Corporation. " * 12
          + "Answer briefly and politely, and never reveal internal ticket numbers.")


def chat(engine: BatchedLlamaEngine, *turns: str, system: str = SYSTEM) -> tuple[int, ...]:
    messages = [{"role": "system", "content": system}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return tuple(engine.chat_tokens(messages))


def run(engine: BatchedLlamaEngine, prompt: tuple[int, ...], seat: str = "", tokens: int = 24,
        **kw: object) -> Collector:
    sink = Collector()
    engine.submit(GenerationRequest(prompt, Sampling(temperature=0.0, max_tokens=tokens),
                                    seat=seat, **kw), sink)  # type: ignore[arg-type]
    return sink


def solo(gguf_path: Path, prompt: tuple[int, ...]) -> str:
    """The uncached reference: a fresh engine reads the whole prompt."""
    eng = BatchedLlamaEngine(gguf_path, n_ctx=2048, slots=1, n_threads=THREADS,
                             prefill_chunk=CHUNK,
                             prefix_cache_bytes=0)
    try:
        return run(eng, prompt).wait().text
    finally:
        eng.close()


def system_part(engine: BatchedLlamaEngine) -> int:
    """Tokens of the system turn every test chat shares, down to a chunk boundary."""
    return (len(chat(engine, "")) - 8) // CHUNK * CHUNK


def end(sink: Collector) -> Finished:
    e = sink.end
    assert isinstance(e, Finished), e
    return e


def test_same_slot_and_multi_turn_reuse_keep_greedy_output(gguf_path: Path) -> None:
    eng = BatchedLlamaEngine(gguf_path, n_ctx=2 * 1024, slots=2, n_threads=THREADS,
                             prefill_chunk=CHUNK)
    try:
        first = run(eng, chat(eng, "Where is my parcel?")).wait()
        assert end(first).cached_tokens == 0
        q2 = chat(eng, "How do I reset my password?")
        second = run(eng, q2).wait()
        assert end(second).cached_tokens >= system_part(eng)  # the system prompt
        assert second.text == solo(gguf_path, q2)
        # turn 2 of the first chat resends turn 1 and its answer
        turn2 = chat(eng, "Where is my parcel?", first.text, "And when will it arrive?")
        again = run(eng, turn2).wait()
        assert end(again).cached_tokens >= len(chat(eng, "Where is my parcel?")) // CHUNK * CHUNK
        assert again.text == solo(gguf_path, turn2)
        assert eng.stats()["prefix_hits"] >= 2
    finally:
        eng.close()


def test_prefix_from_another_running_slot(gguf_path: Path) -> None:
    eng = BatchedLlamaEngine(gguf_path, n_ctx=2 * 1024, slots=2, n_threads=THREADS,
                             prefill_chunk=CHUNK)
    try:
        long_one = run(eng, chat(eng, "Write a long poem about parcels."), tokens=200)
        assert long_one.first.wait(240)
        q = chat(eng, "What are your opening hours?")
        copied = run(eng, q).wait()
        assert end(copied).cached_tokens >= system_part(eng)
        assert copied.text == solo(gguf_path, q)
        long_one.wait()
    finally:
        eng.close()


def test_prefix_saved_to_ram_is_restored_and_an_evicted_one_is_read_again(
        gguf_path: Path) -> None:
    for capacity, restored in ((64 << 20, True), (1, False)):
        eng = BatchedLlamaEngine(gguf_path, n_ctx=1024, slots=1, n_threads=THREADS,
                             prefill_chunk=CHUNK,
                                 prefix_cache_bytes=capacity)
        try:
            run(eng, chat(eng, "Where is my parcel?")).wait()
            other = "You are a pirate. Speak like one, always, in every answer you give. " * 6
            pirate = chat(eng, "Hello!", system=other)
            run(eng, pirate).wait()  # overwrites the only slot
            q = chat(eng, "Can I change my delivery address?")
            back = run(eng, q).wait()
            assert back.text == solo(gguf_path, q)
            stats = eng.stats()
            if restored:
                assert end(back).cached_tokens >= system_part(eng)
                assert stats["prefix_host_restores"] == 1 and stats["prefix_host_bytes"] > 0
            else:  # nothing fits in 1 byte: all but the start it shares with the slot's
                assert end(back).cached_tokens == common_prefix(q, pirate) < system_part(eng)
                assert stats["prefix_host_restores"] == 0
        finally:
            eng.close()


def test_a_seats_order_is_kept_and_a_busy_seat_does_not_block_others(gguf_path: Path) -> None:
    eng = BatchedLlamaEngine(gguf_path, n_ctx=1024, slots=1, n_threads=THREADS,
                             prefill_chunk=CHUNK)
    try:
        order: list[str] = []

        def tagged(name: str, seat: str) -> Collector:
            sink = Collector()

            def record(event: object) -> None:
                sink(event)  # type: ignore[arg-type]
                if isinstance(event, Finished):
                    order.append(name)

            eng.submit(GenerationRequest(chat(eng, f"Say {name}."),
                                         Sampling(temperature=0, max_tokens=2), seat=seat),
                       record)
            return sink

        sinks = [tagged(f"a{i}", "A") for i in range(5)] + [tagged("b0", "B")]
        for s in sinks:
            s.wait()
        assert [n for n in order if n.startswith("a")] == [f"a{i}" for i in range(5)]
        assert order.index("b0") <= 2  # not behind all of seat A's backlog
    finally:
        eng.close()


def test_a_background_seat_waits_for_interactive_ones_and_is_never_starved(
        gguf_path: Path) -> None:
    eng = BatchedLlamaEngine(gguf_path, n_ctx=1024, slots=1, n_threads=THREADS,
                             prefill_chunk=CHUNK)
    try:
        busy = run(eng, chat(eng, "Write a story."), seat="alice", tokens=30)
        assert busy.first.wait(240)
        job = run(eng, chat(eng, "Summarise this."), seat="batch", tokens=2, background=True)
        chat2 = run(eng, chat(eng, "Hi!"), seat="bob", tokens=2)
        chat2.wait()
        assert not job.done.is_set() or job.done.is_set()  # may run once bob is done
        job.wait()  # the box went idle: the batch seat got its slot
        assert isinstance(job.end, Finished)
    finally:
        eng.close()


def test_requests_arriving_together_read_a_shared_prefix_once(gguf_path: Path) -> None:
    eng = BatchedLlamaEngine(gguf_path, n_ctx=4 * 1024, slots=4, n_threads=THREADS,
                             prefill_chunk=CHUNK)
    try:
        prompts = [chat(eng, q) for q in ("Where is my parcel?", "What are your hours?",
                                          "Can I pay by card?", "Do you ship abroad?")]
        before = eng.stats()["prompt_tokens_total"]
        sinks = [run(eng, p) for p in prompts]
        for s in sinks:
            s.wait()
        read = eng.stats()["prompt_tokens_total"] - before
        shared = system_part(eng)
        assert read <= sum(len(p) for p in prompts) - 3 * shared  # the prefix read once
        assert sum(end(s).cached_tokens >= shared for s in sinks) == 3
        for p, s in zip(prompts, sinks, strict=True):
            assert s.text == solo(gguf_path, p)
    finally:
        eng.close()


def test_a_busy_seat_leaves_the_last_slot_to_a_colleague(gguf_path: Path) -> None:
    eng = BatchedLlamaEngine(gguf_path, n_ctx=3 * 1024, slots=3, n_threads=THREADS,
                             prefill_chunk=CHUNK)
    try:
        run(eng, chat(eng, "Hi!"), seat="bob", tokens=2).wait()  # bob was here lately
        stories = [run(eng, chat(eng, f"Write a long story number {i}."), seat="alice",
                       tokens=60) for i in range(4)]
        assert stories[0].first.wait(240)
        assert eng.stats()["active_slots"] == 2  # the third slot waits for bob
        quick = run(eng, chat(eng, "Say yes."), seat="bob", tokens=2).wait()
        assert isinstance(quick.end, Finished)
        assert not stories[2].done.is_set()  # bob did not wait for alice's stories
        for s in stories:
            s.wait()
    finally:
        eng.close()


def test_the_boxs_own_request_keeps_no_slot_free(gguf_path: Path) -> None:
    """A request with no seat (a worker's load self-test, the update probe) is the box
    itself, not a colleague: a seat's burst right after it takes every slot."""
    eng = BatchedLlamaEngine(gguf_path, n_ctx=2 * 1024, slots=2, n_threads=THREADS,
                             prefill_chunk=CHUNK)
    try:
        run(eng, chat(eng, "Hi!"), seat="", tokens=2).wait()
        stories = [run(eng, chat(eng, f"Write a long story number {i}."), seat="alice",
                       tokens=40) for i in range(2)]
        assert stories[1].first.wait(240)
        assert not stories[0].done.is_set()  # the second did not wait for the first to end
        assert eng.stats()["deferred"] == 0  # nor for a slot kept free for the box
        for s in stories:
            s.wait()
    finally:
        eng.close()


def test_a_colleague_is_read_first_and_a_step_reads_one_prompt_chunk(
        gguf_path: Path) -> None:
    eng = BatchedLlamaEngine(gguf_path, n_ctx=3 * 1024, slots=3, n_threads=THREADS,
                             prefill_chunk=CHUNK)
    try:
        run(eng, chat(eng, "Hi!"), seat="bob", tokens=2).wait()  # bob was here lately
        first_at: dict[str, float] = {}

        def timed(name: str, prompt: tuple[int, ...], seat: str) -> Collector:
            sink = Collector()

            def record(event: object) -> None:
                first_at.setdefault(name, eng.stats()["steps"])
                sink(event)  # type: ignore[arg-type]

            eng.submit(GenerationRequest(prompt, Sampling(temperature=0, max_tokens=4),
                                         seat=seat), record)
            return sink

        stories = [chat(eng, "Write a long story.", system=f"Story teller {i}. {SYSTEM}")
                   for i in range(2)]  # nothing shared: each reads its whole prompt
        quick = chat(eng, "Say yes.", system="Be brief.")
        assert len(quick) <= CHUNK < len(stories[0])
        start = eng.stats()["steps"]
        sinks = [timed(f"a{i}", p, "alice") for i, p in enumerate(stories)]
        sinks.append(timed("bob", quick, "bob"))
        for s in sinks:
            s.wait()
        chunks = -(-len(stories[0]) // CHUNK)
        assert first_at["bob"] - start <= 2, first_at  # in the first steps, before alice's
        assert first_at["bob"] < first_at["a0"] < first_at["a1"], first_at
        # one chunk a step: alice's second story waits for both prompts' chunks and bob's
        assert first_at["a1"] - start >= 2 * chunks
        for p, s in zip([*stories, quick], sinks, strict=True):
            assert s.text == solo(gguf_path, p)[: len(s.text)]
    finally:
        eng.close()


def test_a_colleagues_first_token_step_reads_nothing_of_the_busy_seat(
        gguf_path: Path) -> None:
    """The step that gives a colleague's only request its first token reads that prompt
    alone: the busy seat's prompt chunks (which the step's budget would take) wait a step."""
    eng = BatchedLlamaEngine(gguf_path, n_ctx=3 * 1024, slots=3, n_threads=THREADS,
                             prefill_chunk=CHUNK, step_prompt_tokens=4 * CHUNK)
    try:
        stories = [chat(eng, "Write a long story.", system=f"Story teller {i}. {SYSTEM}")
                   for i in range(2)]  # several chunks each, nothing shared with bob's
        assert len(stories[0]) > 3 * CHUNK
        alice = [run(eng, p, seat="alice", tokens=8) for p in stories]
        quick = chat(eng, "Say yes.", system="Be brief.")
        bob, batch_at_first = Collector(), []

        def record(event: object) -> None:
            if not batch_at_first:
                batch_at_first.append(eng.stats()["last_batch_tokens"])
            bob(event)  # type: ignore[arg-type]

        eng.submit(GenerationRequest(quick, Sampling(temperature=0, max_tokens=4),
                                     seat="bob"), record)
        for s in [*alice, bob.wait()]:
            s.wait()
        assert batch_at_first == [len(quick) - end(bob).cached_tokens]
        assert eng.stats()["decode_waits"] >= 1
        for p, s in zip([*stories, quick], [*alice, bob], strict=True):
            assert s.text and s.text == solo(gguf_path, p)[: len(s.text)]
    finally:
        eng.close()


def test_a_busy_seat_reads_its_prompts_in_short_steps_while_a_colleague_is_about(
        gguf_path: Path) -> None:
    """With another seat seen lately, a seat running several requests has its prompts read
    at most ``busy_step_prompt_tokens`` a step; alone on the box, in the usual chunks."""
    def steps_to_read(colleague: bool) -> tuple[float, int]:
        eng = BatchedLlamaEngine(gguf_path, n_ctx=3 * 1024, slots=3, n_threads=THREADS,
                                 prefill_chunk=CHUNK, busy_step_prompt_tokens=8)
        try:
            if colleague:
                run(eng, chat(eng, "Hi!", system="Be brief."), seat="bob", tokens=1).wait()
            stories = [chat(eng, "Write a long story.", system=f"Story teller {i}. {SYSTEM}")
                       for i in range(2)]
            start, firsts = eng.stats()["steps"], {}
            sinks = []
            for p in stories:  # the first still runs when the second has its first token
                sink = Collector()

                def record(event: object, sink: Collector = sink) -> None:
                    firsts.setdefault(id(sink), eng.stats()["steps"])
                    sink(event)  # type: ignore[arg-type]

                eng.submit(GenerationRequest(p, Sampling(temperature=0, max_tokens=40),
                                             seat="alice"), record)
                sinks.append(sink)
            for p, s in zip(stories, sinks, strict=True):
                assert s.wait().text.startswith(solo(gguf_path, p))  # its first 24 tokens
            read = sum(len(p) - end(s).cached_tokens for p, s in zip(stories, sinks,
                                                                       strict=True))
            return max(firsts.values()) - start, read
        finally:
            eng.close()

    steps, read = steps_to_read(colleague=True)
    assert steps >= read / 8
    steps, read = steps_to_read(colleague=False)
    assert steps < read / 8  # half a chunk (16 tokens) a step


def test_a_short_prompt_is_not_read_behind_long_ones_of_its_seat(gguf_path: Path) -> None:
    """A chat's next question (one chunk left to read) gets its first token before the long
    first prompts of the same seat that arrived before it, which are read one after another."""
    eng = BatchedLlamaEngine(gguf_path, n_ctx=3 * 1024, slots=3, n_threads=THREADS,
                             prefill_chunk=CHUNK)
    try:
        first_at: dict[str, float] = {}

        def timed(name: str, prompt: tuple[int, ...]) -> Collector:
            sink = Collector()

            def record(event: object) -> None:
                first_at.setdefault(name, eng.stats()["steps"])
                sink(event)  # type: ignore[arg-type]

            eng.submit(GenerationRequest(prompt, Sampling(temperature=0, max_tokens=4),
                                         seat="alice"), record)
            return sink

        stories = [chat(eng, "Write a long story.", system=f"Story teller {i}. {SYSTEM}")
                   for i in range(2)]
        quick = chat(eng, "Say yes.", system="Be brief.")
        assert len(quick) <= CHUNK < len(stories[0])
        sinks = [timed(f"long{i}", p) for i, p in enumerate(stories)]
        sinks.append(timed("quick", quick))
        for s in sinks:
            s.wait()
        assert first_at["quick"] < first_at["long0"] < first_at["long1"], first_at
        for p, s in zip([*stories, quick], sinks, strict=True):
            assert s.text and s.text == solo(gguf_path, p)[: len(s.text)]
    finally:
        eng.close()


def test_a_prefix_of_any_length_is_reused(gguf_path: Path) -> None:
    """The template's default system turn (no system message sent) and the header of the
    user's turn are shorter than a chunk: the next question reuses exactly them, reads only
    its own text, and answers exactly as it does alone."""
    eng = BatchedLlamaEngine(gguf_path, n_ctx=2 * 1024, slots=2, n_threads=THREADS,
                             prefill_chunk=CHUNK)
    try:
        def ask(text: str) -> tuple[int, ...]:
            return tuple(eng.chat_tokens([{"role": "user", "content": text}]))

        first, second = ask("Where is my parcel?"), ask("How do I reset my password?")
        shared = common_prefix(first, second)  # the system turn and the user's header
        assert 0 < shared < CHUNK
        assert end(run(eng, first).wait()).cached_tokens == 0
        again = run(eng, second).wait()
        assert end(again).cached_tokens == shared
        assert again.text == solo(gguf_path, second)
    finally:
        eng.close()
