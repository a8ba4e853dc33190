"""Text released from token bytes: whole characters, stop strings never leaked."""

from engines.llm.textstream import TextStream


def test_utf8_split_across_tokens() -> None:
    ts = TextStream()
    data = "héllo €".encode()
    out = "".join(ts.push(data[i:i + 1]) for i in range(len(data))) + ts.flush()
    assert out == "héllo €"


def test_stop_string_across_tokens_is_held_back_and_cut() -> None:
    ts = TextStream(stop=("END",))
    pieces = [b"abc E", b"N", b"D more"]
    out = [ts.push(p) for p in pieces]
    assert out == ["abc ", "", ""]
    assert ts.stopped and ts.flush() == ""


def test_false_start_of_stop_is_released() -> None:
    ts = TextStream(stop=("END",))
    assert ts.push(b"EN") == ""
    assert ts.push(b"Xy") == "ENXy"
    assert ts.flush() == "" and not ts.stopped


def test_held_text_flushed_at_end() -> None:
    ts = TextStream(stop=("STOP",))
    assert ts.push(b"ST") == ""
    assert ts.flush() == "ST"
