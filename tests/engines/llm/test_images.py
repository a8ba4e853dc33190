"""Images through the engine: SmolLM2 with the tests' colour projector
(tests/colour_projector.py) in a supervised worker, the image bytes crossing the pipe and
decoded there. A red square is answered as red, a blue one as blue; the answer is the same
every time, and a text request decoded beside an image request gets its solo answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines.base import LLMEngine
from engines.errors import InputError, InvalidRequestError
from engines.types import (
    IMAGE_TOKEN,
    Failed,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Sampling,
    TextDelta,
)
from tests.appliance.test_image_parts import png
from tests.colour_projector import write_projector
from tests.engines.llm.test_batched import make_engine

pytestmark = pytest.mark.slow

MARKER = "<image-test>"
RED, BLUE = (0, 0, 255), (255, 0, 0)  # BGR


@pytest.fixture(scope="module")
def vlm(gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMEngine]:
    projector = write_projector(gguf_path, tmp_path_factory.mktemp("vlm") / "mmproj.gguf")
    engine = make_engine("worker", gguf_path, n_ctx=2048, slots=2, n_threads=1,
                         projector_path=str(projector))
    yield engine
    engine.close()


class Run:
    def __init__(self, engine: LLMEngine, req: GenerationRequest) -> None:
        self.events: list[GenerationEvent] = []
        self.done = threading.Event()
        engine.submit(req, self._sink)

    def _sink(self, event: GenerationEvent) -> None:
        self.events.append(event)
        if isinstance(event, Finished | Failed):
            self.done.set()

    def text(self) -> str:
        assert self.done.wait(240), "no answer in 240 s"
        last = self.events[-1]
        assert isinstance(last, Finished), last
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))


def ask(engine: LLMEngine, colour: tuple[int, int, int] | None, tokens: int = 12) -> Run:
    if colour is None:
        ids = engine.chat_tokens([{"role": "user", "content": "Name a fruit."}])
        return Run(engine, GenerationRequest(tuple(ids), Sampling(max_tokens=tokens,
                                                                  temperature=0)))
    ids = engine.vision_chat_tokens(
        [{"role": "user", "content": f"What colour is this picture? {MARKER}"}], None, MARKER)
    assert ids.count(IMAGE_TOKEN) == 1
    return Run(engine, GenerationRequest(tuple(ids), Sampling(max_tokens=tokens, temperature=0),
                                         images=(png(colour, 64),)))


def test_the_answer_follows_the_image_and_repeats(vlm: LLMEngine) -> None:
    assert vlm.info.images
    solo = ask(vlm, None, 8).text()
    red = ask(vlm, RED).text()
    assert "red" in red.lower() and "blue" not in red.lower()
    # an image request and a text request decoded together: each gets its solo answer
    blue, text = ask(vlm, BLUE), ask(vlm, None, 8)
    assert "blue" in blue.text().lower()
    assert text.text() == solo
    assert ask(vlm, RED).text() == red  # greedy: the same image, the same answer


def test_what_the_worker_cannot_read_fails_the_request(vlm: LLMEngine) -> None:
    ids = vlm.vision_chat_tokens([{"role": "user", "content": f"Look: {MARKER}"}], None,
                                 MARKER)
    run = Run(vlm, GenerationRequest(tuple(ids), Sampling(max_tokens=2),
                                     images=(png(RED)[:60],)))
    assert run.done.wait(60)
    assert isinstance(run.events[-1], Failed)
    assert isinstance(run.events[-1].error, InputError)
    run = Run(vlm, GenerationRequest(tuple(ids), Sampling(max_tokens=2), images=()))
    assert run.done.wait(60) and isinstance(run.events[-1], Failed)
    assert isinstance(run.events[-1].error, InvalidRequestError)  # a place, no image


def test_a_model_without_a_projector_takes_no_images(gguf_path: Path) -> None:
    from engines.llm.batched import BatchedLlamaEngine

    engine = BatchedLlamaEngine(gguf_path, n_ctx=512, slots=1, n_threads=1)
    try:
        assert not engine.info.images
        with pytest.raises(InvalidRequestError, match="does not take images"):
            engine.vision_chat_tokens([{"role": "user", "content": MARKER}], None, MARKER)
    finally:
        engine.close()
