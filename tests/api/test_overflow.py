"""Cloud overflow with two real boxes on loopback: box A (one decoding slot, a queue of
one) has box B registered as its remote ``cloud``. While A is saturated, a seat whose
egress policy allows it is served by B (the answer and the usage row say so); a seat
without it gets A's 503 with Retry-After; remote failures are 502/503, never 500."""

from __future__ import annotations

import csv
import io
import os
import stat
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import LLM, ROOT, Box, free_port, linked_models

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NO_EOS = {"0": -100, "2": -100}  # <|endoftext|> and <|im_end|>: keep generating
HI = [{"role": "user", "content": "Say hello."}]


def call(box: Box, method: str, path: str, key: str | None = None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or box.api_key}"}
    return httpx.request(method, box.base_url + path, headers=headers, timeout=120, **kw)


def cli(box: Box, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "APPLIANCE_CONFIG": os.devnull}
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "--data-dir",
                        str(box.data_dir), "fleet", *args, "--api", box.base_url],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    r.stdout = " ".join((r.stdout + r.stderr).split())  # as one line, whatever the width
    return r


@pytest.fixture(scope="module")
def boxes(model_store, tmp_path_factory, vendor_key):
    tmp = tmp_path_factory.mktemp("overflow")
    trust = {"TEST_TRUSTED_KEYS_FILE": str(vendor_key.trusted_file)}
    remote = Box(tmp / "b" / "data", linked_models(model_store.root, tmp / "b" / "models"),
                 env={**trust, "APPLIANCE_FLEET_BOX": "box-b"})
    try:
        local = Box(tmp / "a" / "data", linked_models(model_store.root, tmp / "a" / "models"),
                    env={**trust, "APPLIANCE_FLEET_BOX": "box-a", "APPLIANCE_LLM_SLOTS": "1",
                         "APPLIANCE_LLM_MAX_QUEUE": "1"})
    except BaseException:
        remote.stop()
        raise
    yield local, remote
    local.stop()
    remote.stop()


@pytest.fixture(scope="module")
def seats(boxes):
    """Two user seats on A: ``on`` (egress "llm", set by PATCH) and ``off`` (default)."""
    local, _ = boxes
    keys = {}
    for name in ("on", "off"):
        r = call(local, "POST", "/admin/seats", json={"name": name, "requests_per_minute": 0})
        assert r.status_code == 201, r.text
        assert r.json()["egress"] == "none"  # off unless the admin says otherwise
        k = call(local, "POST", f"/admin/seats/{r.json()['id']}/keys")
        keys[name] = (r.json()["id"], k.json()["key"])
    return keys


def test_add_remote_refuses_a_missing_or_unreadable_key_file(boxes, tmp_path) -> None:
    local, remote = boxes
    url = remote.base_url + "/v1"
    r = cli(local, "add-remote", "cloud", url, "--key-file", str(tmp_path / "absent.key"))
    assert r.returncode == 2 and "absent.key does not exist" in r.stdout
    r = cli(local, "add-remote", "cloud", url, "--key-file", str(tmp_path))
    assert r.returncode == 2 and "is a directory" in r.stdout
    (tmp_path / "empty.key").write_text("\n")
    r = cli(local, "add-remote", "cloud", url, "--key-file", str(tmp_path / "empty.key"))
    assert r.returncode == 2 and "is empty" in r.stdout
    assert call(local, "GET", "/admin/remotes").json() == []


def test_add_remote_stores_the_key_privately_and_audits(boxes) -> None:
    local, remote = boxes
    r = cli(local, "add-remote", "cloud", remote.base_url + "/v1", "--key-file",
            str(remote.data_dir / "admin.key"), "--models", LLM)
    assert r.returncode == 0, r.stdout
    listed = call(local, "GET", "/admin/remotes")
    assert listed.json()[0] | {"added_at": 0} == {
        "name": "cloud", "url": remote.base_url + "/v1", "models": {LLM: LLM}, "added_at": 0}
    key_file = local.data_dir / "remotes" / "cloud.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret = remote.api_key
    assert secret not in listed.text and secret not in r.stdout
    assert secret not in (local.data_dir / "server.log").read_text()
    audit = call(local, "GET", "/admin/audit", params={"q": "remote.add"}).json()["rows"]
    assert audit and audit[-1]["details"]["name"] == "cloud"
    assert secret not in str(audit)
    shown = cli(local, "remotes")
    assert shown.returncode == 0 and "cloud" in shown.stdout and secret not in shown.stdout


def test_egress_policy_is_an_audited_seat_setting_shown_in_models(boxes, seats) -> None:
    local, _ = boxes
    on_id, on_key = seats["on"]
    r = call(local, "PATCH", f"/admin/seats/{on_id}", json={"egress": "llm"})
    assert r.status_code == 200 and r.json()["egress"] == "llm"
    bad = call(local, "PATCH", f"/admin/seats/{on_id}", json={"egress": "all"})
    assert bad.status_code == 400 and "egress" in bad.text
    listed = {s["name"]: s["egress"] for s in call(local, "GET", "/admin/seats").json()}
    assert (listed["on"], listed["off"]) == ("llm", "none")
    audit = call(local, "GET", "/admin/audit", params={"q": "seat.egress"}).json()["rows"]
    assert [(a["details"]["from"], a["details"]["to"]) for a in audit] == [("none", "llm")]
    cards = {k: {c["id"]: c for c in call(local, "GET", "/v1/models", key).json()["data"]}
             for k, key in (("on", on_key), ("off", seats["off"][1]))}
    assert cards["on"][LLM]["egress"] is True
    assert cards["on"][LLM]["egress_remotes"] == ["cloud"]
    assert cards["off"][LLM]["egress"] is False and cards["off"][LLM]["egress_remotes"] == []


class LongStream:
    """A streamed generation on A that runs until closed (EOS banned)."""

    def __init__(self, box: Box) -> None:
        self.client = httpx.Client(timeout=300)
        self.started = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(box,), daemon=True)
        self._thread.start()

    def _run(self, box: Box) -> None:
        body = {"model": LLM, "messages": [{"role": "user", "content": "Count upwards."}],
                "max_tokens": 1800, "logit_bias": NO_EOS, "stream": True}
        try:
            with self.client.stream("POST", box.base_url + "/v1/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {box.api_key}"}) as r:
                for _ in r.iter_lines():
                    self.started.set()
                    if self._stop.is_set():
                        return
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()

    def close(self) -> None:
        self._stop.set()
        self.client.close()
        self._thread.join(timeout=30)


def gauge(box: Box, name: str) -> float:
    for line in call(box, "GET", "/metrics").text.splitlines():
        if line.startswith(f'appliance_engine_{name}{{model="{LLM}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def wait_for(check, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def usage_boxes(box: Box, seat_id: int) -> list[dict[str, str]]:
    """The seat's usage rows of completion routes (``/v1/models`` is metered too)."""
    text = call(box, "GET", "/admin/usage.csv", params={"seat_id": seat_id}).text
    return [r for r in csv.DictReader(io.StringIO(text)) if "completions" in r["route"]]


def test_saturated_box_overflows_only_for_seats_that_allow_it(boxes, seats) -> None:
    local, remote = boxes
    on_id, on_key = seats["on"]
    off_id, off_key = seats["off"]
    # not saturated: the egress seat is served on A itself
    quiet = call(local, "POST", "/v1/chat/completions", on_key,
                 json={"model": LLM, "messages": HI, "max_tokens": 2})
    assert quiet.status_code == 200 and quiet.headers.get("x-appliance-node") != "cloud"
    running = LongStream(local)
    waiting = None
    try:
        assert running.started.wait(180) and running.error is None
        wait_for(lambda: gauge(local, "active_slots") == 1.0)
        # every slot busy: the egress seat goes to the remote, streamed and not
        on = openai.OpenAI(base_url=local.base_url + "/v1", api_key=on_key, max_retries=0)
        raw = on.chat.completions.with_raw_response.create(model=LLM, messages=HI,
                                                           max_tokens=4, temperature=0)
        answer = raw.parse()
        assert raw.headers["x-appliance-node"] == "cloud"
        assert answer.model == LLM and answer.usage.completion_tokens > 0
        chunks, usage = [], None
        with on.chat.completions.with_streaming_response.create(
                model=LLM, messages=HI, max_tokens=4, stream=True,
                stream_options={"include_usage": True}) as resp:
            assert resp.headers["x-appliance-node"] == "cloud"
            for chunk in resp.parse():
                chunks.append(chunk)
                usage = chunk.usage or usage
        assert chunks and usage is not None and usage.completion_tokens > 0
        plain = list(on.completions.create(model=LLM, prompt="Hello", max_tokens=3,
                                           stream=True))
        assert plain and all(c.usage is None for c in plain)  # not asked: not relayed
        # and with the local queue full too, a seat without egress gets A's 503
        waiting = LongStream(local)
        wait_for(lambda: gauge(local, "queue_depth") == 1.0)
        off = call(local, "POST", "/v1/chat/completions", off_key,
                   json={"model": LLM, "messages": HI, "max_tokens": 4})
        assert off.status_code == 503, off.text
        assert int(off.headers["retry-after"]) >= 1
        still = call(local, "POST", "/v1/chat/completions", on_key,
                     json={"model": LLM, "messages": HI, "max_tokens": 4})
        assert still.status_code == 200 and still.headers["x-appliance-node"] == "cloud"
        # remote failures: a clear 503 (unreachable) or 502 (key refused), never a 500
        assert call(local, "DELETE", "/admin/remotes/cloud").status_code == 200
        dead = call(local, "POST", "/admin/remotes", json={
            "name": "dead", "url": f"http://127.0.0.1:{free_port()}/v1", "key": "k"})
        assert dead.status_code == 201, dead.text
        r = call(local, "POST", "/v1/chat/completions", on_key,
                 json={"model": LLM, "messages": HI, "max_tokens": 4, "stream": True})
        assert r.status_code == 503 and r.json()["error"]["code"] == "remote_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        call(local, "DELETE", "/admin/remotes/dead")
        wrong = call(local, "POST", "/admin/remotes", json={
            "name": "wrong", "url": remote.base_url + "/v1", "key": "sk-box-000000000000.x"})
        assert wrong.status_code == 201, wrong.text
        r = call(local, "POST", "/v1/chat/completions", on_key,
                 json={"model": LLM, "messages": HI, "max_tokens": 4})
        assert r.status_code == 502 and "refused" in r.json()["error"]["message"]
        call(local, "DELETE", "/admin/remotes/wrong")
    finally:
        running.close()
        if waiting is not None:
            waiting.close()
    rows = usage_boxes(local, on_id)
    served = [r for r in rows if r["box"] == "cloud"]
    assert len(served) == 4 and all(int(r["tokens_out"]) > 0 for r in served)
    assert rows[0]["box"] == "box-a"  # the quiet request ran here
    assert [r["status"] for r in rows if r["box"] in ("dead", "wrong")] == ["503", "502"]
    assert [r["status"] for r in usage_boxes(local, off_id)] == ["503"]
