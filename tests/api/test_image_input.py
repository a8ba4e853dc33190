"""Image input on /v1/chat/completions, on a box without a vision-language model: every
image request gets a 400 saying what to fix (remote URL, bad image, no VLM), never a 500
and never a silent text-only answer."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.appliance.test_image_parts import data_url, png, png_header_only
from tests.conftest import LLM

pytestmark = pytest.mark.slow


def _ask(box, url: str, **extra) -> httpx.Response:
    content = [{"type": "text", "text": "What colour is this?"},
               {"type": "image_url", "image_url": {"url": url}}]
    return httpx.post(box.base_url + "/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {box.api_key}"},
                      json={"model": LLM, "max_tokens": 4,
                            "messages": [{"role": "user", "content": content}], **extra})


def _message(r: httpx.Response) -> str:
    assert r.status_code == 400, r.text
    return r.json()["error"]["message"]


def test_a_model_without_a_projector_refuses_images_naming_it(client) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=LLM, max_tokens=4, messages=[{
            "role": "user", "content": [
                {"type": "text", "text": "What colour is this?"},
                {"type": "image_url", "image_url": {"url": data_url(png())}}]}])
    message = exc.value.body["message"]
    assert f"model {LLM!r} does not take images" in message
    assert "no vision-language model is installed" in message


def test_remote_image_urls_are_refused(box) -> None:
    message = _message(_ask(box, "https://example.com/cat.png"))
    assert "no internet access" in message and "data:image/png;base64" in message


@pytest.mark.parametrize("url,says", [
    (data_url(b"hello", "text/plain"), "'text/plain'"),
    (data_url(png_header_only(30000, 30000)), "MP"),
    (data_url(png()[:40]), "truncated"),
    ("data:image/png;base64,%%%", "not valid base64"),
])
def test_bad_images_are_refused_before_any_model_is_asked(box, url, says) -> None:
    assert says in _message(_ask(box, url))


def test_models_list_the_vision_chat_capability(box) -> None:
    auth = {"Authorization": f"Bearer {box.api_key}"}
    r = httpx.get(box.base_url + "/v1/models", params={"purpose": "vision-chat"},
                  headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["data"] == []  # no VLM on the test box
    chat = httpx.get(box.base_url + "/v1/models", headers=auth, timeout=30).json()["data"]
    assert any(c["id"] == LLM and "vision-chat" not in c["capabilities"] for c in chat)


def test_text_parts_still_work(client) -> None:
    r = client.chat.completions.create(model=LLM, max_tokens=2, messages=[{
        "role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    assert r.choices[0].finish_reason in ("stop", "length")


VLM = "smollm2-colour-vlm"


@pytest.fixture(scope="module")
def vlm_box(model_store, gguf_path, tmp_path_factory, vendor_key):
    """A box with a vision-language pack: SmolLM2 and the tests' colour projector."""
    from tests.colour_projector import write_pack
    from tests.conftest import Box, linked_models

    tmp = tmp_path_factory.mktemp("vlm-box")
    models = linked_models(model_store.root, tmp / "models")
    write_pack(gguf_path, models, VLM)
    server = Box(tmp / "data", models,
                 env={"TEST_TRUSTED_KEYS_FILE": str(vendor_key.trusted_file),
                      "APPLIANCE_LLM_SLOTS": "2"})
    yield server
    server.stop()


def _image_question(colour: tuple[int, int, int]) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "text", "text": "What colour is this picture? "},
        {"type": "image_url", "image_url": {"url": data_url(png(colour, 64))}}]}]


def test_a_vision_language_model_answers_about_the_image(vlm_box) -> None:
    client = openai.OpenAI(base_url=vlm_box.base_url + "/v1", api_key=vlm_box.api_key,
                           max_retries=0)
    r = client.chat.completions.create(model=VLM, messages=_image_question((0, 0, 255)),
                                       temperature=0, max_tokens=12)
    assert "red" in (r.choices[0].message.content or "").lower()
    assert r.usage.prompt_tokens > 9  # the image's nine positions count as prompt
    stream = client.chat.completions.create(model=VLM, messages=_image_question((255, 0, 0)),
                                            temperature=0, max_tokens=12, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "blue" in text.lower()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_models_say_which_take_images(vlm_box) -> None:
    auth = {"Authorization": f"Bearer {vlm_box.api_key}"}
    listed = httpx.get(vlm_box.base_url + "/v1/models", params={"purpose": "vision-chat"},
                       headers=auth, timeout=30).json()["data"]
    assert [c["id"] for c in listed] == [VLM]
    assert {"chat", "vision-chat"} <= set(listed[0]["capabilities"])
    message = _message(_ask(vlm_box, data_url(png())))  # SmolLM2 alone takes no images
    assert f"the models on this box that take images: {VLM}" in message
