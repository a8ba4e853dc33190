"""Chat templates render in a sandbox and reject bad input clearly."""

import pytest

from engines.errors import InvalidRequestError
from engines.llm.chat import render_chat


def test_default_chatml() -> None:
    out = render_chat([{"role": "user", "content": "hi"}], None)
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_bad_role_and_template_errors() -> None:
    with pytest.raises(InvalidRequestError, match="role"):
        render_chat([{"role": "wizard", "content": "x"}], None)
    with pytest.raises(InvalidRequestError, match="template"):
        render_chat([{"role": "user", "content": "x"}], "{{ raise_exception('nope') }}")
    with pytest.raises(InvalidRequestError):
        render_chat([{"role": "user", "content": "x"}], "{{ ''.__class__.__mro__ }}{% for %}")


def test_sandbox_blocks_attribute_escape() -> None:
    tpl = "{{ messages.__class__.__base__.__subclasses__() }}"
    with pytest.raises(InvalidRequestError):
        render_chat([{"role": "user", "content": "x"}], tpl)
