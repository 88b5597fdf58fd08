"""video_eval.judges / video_eval.cache against a real OpenAI-compatible HTTP server on 127.0.0.1.

The server (http.server in a thread) picks its behaviour from a marker ``<<m:NAME>>`` in the question:
transient 500s, 429 with Retry-After, replies slower than the client timeout, malformed replies,
out-of-range scores, permanent errors, a different served model, 401. It logs every request with a
server-side timestamp, so retries, their spacing and the requests a cached re-run makes are measured
where they happen.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from video_eval import judges
from video_eval.cache import CacheError, JudgeCache, cache_key
from video_eval.judges import (JUDGE_FIELDS, JudgeAuthError, JudgeConfigError, JudgeStats, JudgeUnavailable,
                               MalformedReply, OfflineJudge, OpenAIJudge, TemplateError, judge_records,
                               load_template, normalize_answer, offline_match, parse_reply, retry_after_seconds)

MODEL = "judge-test-model"
KEY_VAR = "VS_JUDGE_TEST_KEY_VAR"
GOOD = "{'pred': 'yes', 'score': 4}"
MARK = re.compile(r"<<m:([\w-]+)>>")


# ============================================================================ the fake server
class FakeServer:
    """Scripted OpenAI-compatible chat-completions server. ``log`` holds one dict per request."""

    def __init__(self) -> None:
        self.log: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.inflight = 0
        self.max_inflight = 0
        self.heal = False  # when True, the permanently failing "down" items start succeeding
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output quiet
                pass

            def _send(self, status, body, headers=(), content_type="application/json"):
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers:
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                                  "owned_by": "test"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                user = body["messages"][-1]["content"]
                m = MARK.search(user)
                marker = m.group(1) if m else "ok"
                with server.lock:
                    n = server.attempts.get(user, 0)
                    server.attempts[user] = n + 1
                    server.log.append({"t": time.monotonic(), "marker": marker, "n": n, "user": user,
                                       "auth": self.headers.get("Authorization"), "model": body.get("model"),
                                       "temperature": body.get("temperature"),
                                       "roles": [x["role"] for x in body["messages"]]})
                    counted = marker != "slow"
                    if counted:
                        server.inflight += 1
                        server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    server.respond(self, marker, n, body)
                finally:
                    if counted:
                        with server.lock:
                            server.inflight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @staticmethod
    def completion(content, model):
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}

    def respond(self, h, marker, n, body):
        model = body.get("model")

        def ok(content=GOOD, served=model):
            h._send(200, self.completion(content, served))

        def err(code, msg, headers=()):
            h._send(code, {"error": {"message": msg, "type": "test"}}, headers)

        if marker == "ok":
            ok()
        elif marker == "no":
            ok("{'pred': 'no', 'score': 1}")
        elif marker == "500x2":
            err(500, "transient") if n < 2 else ok()
        elif marker == "429":
            err(429, "slow down", [("Retry-After", "1")]) if n == 0 else ok()
        elif marker == "429ms":
            err(429, "slow down", [("retry-after-ms", "300")]) if n == 0 else ok()
        elif marker == "slow":
            if n == 0:
                time.sleep(2.0)  # longer than the client's timeout
            ok()
        elif marker == "sleep":
            time.sleep(0.3)
            ok()
        elif marker == "malformed":
            ok("The predicted answer looks right to me.") if n == 0 else ok()
        elif marker == "fence":
            ok("Here is my evaluation:\n```python\n{'pred': 'Yes', 'score': 5.0}\n```\nThanks!")
        elif marker == "range":
            ok("{'pred': 'yes', 'score': 7}")
        elif marker == "down":
            ok() if self.heal else err(500, "the judge is down")
        elif marker == "bad400":
            err(400, "this request is invalid")
        elif marker == "other":
            ok(served="served-snapshot-2")
        elif marker == "auth":
            err(401, "invalid api key")
        # 200 responses that are not chat completions (a flaky proxy); "...-once" ones heal on the retry
        elif marker in ("truncated", "truncated-once"):
            if marker == "truncated" or n == 0:
                h._send(200, json.dumps(self.completion(GOOD, model)).encode()[:57])  # a cut JSON body
            else:
                ok()
        elif marker == "nochoices":
            d = self.completion(GOOD, model)
            del d["choices"]
            h._send(200, d)
        elif marker == "nullcontent":
            h._send(200, self.completion(None, model))
        elif marker == "html":
            h._send(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html")
        else:
            err(500, f"unknown marker {marker}")

    def by_marker(self, marker):
        with self.lock:
            return [r for r in self.log if r["marker"] == marker]

    def count(self):
        with self.lock:
            return len(self.log)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture
def api_key(monkeypatch):
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv(KEY_VAR, key)
    return key


def make_judge(server_url, cache=None, **kw):
    opts = dict(api_key_env=KEY_VAR, concurrency=3, max_retries=3, timeout=1.0, backoff=0.02, max_backoff=0.1,
                cache=cache)
    opts.update(kw)
    return OpenAIJudge(server_url, MODEL, **opts)


def pred_record(qid, question, answer, prediction, config="full", error=None):
    """A prediction record with the SPEC fields in the SPEC order."""
    return {"question_id": str(qid), "video_name": f"v{qid}", "question": question, "answer": answer, "type": None,
            "config": config, "prediction": "" if error else prediction, "error": error, "visual_tokens": 2048,
            "counts": [] if config == "full" else [205], "equivalent_tokens": 2048.0, "new_tokens": 5,
            "prefill_seconds": 0.1, "decode_seconds": 0.2}


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ============================================================================ the full scripted run
def test_scripted_server_retries_failures_cache_and_no_key_leak(server, api_key, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # everything any library logs, at every level
    debug_log = logging.FileHandler(tmp_path / "debug.log")
    debug_log.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(debug_log)
    try:
        _scripted_run(server, api_key, tmp_path, caplog)
    finally:
        logging.getLogger().removeHandler(debug_log)
        debug_log.close()
    # the key is in no file under tmp_path (sqlite db and its WAL, judged files, the debug log) ...
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("cache.sqlite") for p in files) and (tmp_path / "debug.log").stat().st_size > 0
    for p in files:
        assert api_key.encode() not in p.read_bytes(), p
    # ... and in no log record
    assert api_key not in caplog.text
    assert all(api_key not in str(r.args) for r in caplog.records)


def _scripted_run(server, api_key, tmp_path, caplog):
    markers = ["ok", "no", "500x2", "429", "429ms", "slow", "malformed", "fence", "range", "down", "bad400",
               "other", "other2", "sleep1", "sleep2", "sleep3", "sleep4", "sleep5"]
    recs = []
    for i, mk in enumerate(markers):
        tag = {"other2": "other"}.get(mk, re.sub(r"\d+$", "", mk) if mk.startswith("sleep") else mk)
        recs.append(pred_record(i, f"<<m:{tag}>> what happens in clip {i}?", f"answer {i}", f"prediction {i}"))
    # the same (question, answer, prediction) under two configs: sent once
    recs.append(pred_record(0, recs[0]["question"], recs[0]["answer"], recs[0]["prediction"], config="video@0.1"))
    # a prediction that failed: never sent
    recs.append(pred_record(99, "<<m:errored>> never sent?", "x", "", error="VideoError: cannot decode v99"))
    cache = tmp_path / "cache.sqlite"

    judge = make_judge(server.url, cache=str(cache))
    assert judge.label == f"openai-{MODEL}"
    assert judge.info() == {"kind": "openai", "model": MODEL, "template_sha256": load_template().sha256,
                            "base_url": server.url}
    progress = []
    t0 = time.monotonic()
    out, stats = judge_records(recs, judge, progress=lambda done, total: progress.append((done, total)))
    elapsed = time.monotonic() - t0
    by = {(r["question_id"], r["config"]): r for r in out}

    # same order and fields as the input, judge fields appended in SPEC order
    assert [(r["question_id"], r["config"]) for r in out] == [(r["question_id"], r["config"]) for r in recs]
    for r_in, r_out in zip(recs, out):
        assert list(r_out) == list(r_in) + list(JUDGE_FIELDS)
        assert r_out["judge"] == {"kind": "openai", "model": MODEL, "template_sha256": load_template().sha256}
    assert progress[-1] == (len(recs) - 1, len(recs) - 1)

    # successes, including the retried ones, parsed
    ok_markers = {"ok": ("yes", 4), "no": ("no", 1), "500x2": ("yes", 4), "429": ("yes", 4), "429ms": ("yes", 4),
                  "slow": ("yes", 4), "malformed": ("yes", 4), "fence": ("yes", 5), "other": ("yes", 4)}
    for i, mk in enumerate(markers):
        r = by[(str(i), "full")]
        if mk in ok_markers or mk == "other2" or mk.startswith("sleep"):
            want = ok_markers.get(mk, ("yes", 4))
            assert (r["judge_pred"], r["judge_score"], r["judge_error"]) == (*want, None), (mk, r)
    assert by[("0", "video@0.1")]["judge_pred"] == "yes"
    # judge failures: no verdict, a one-line error, never scored as wrong
    for mk, text in (("range", "outside 0..5"), ("down", "HTTP 500"), ("bad400", "HTTP 400")):
        r = by[(str(markers.index(mk)), "full")]
        assert r["judge_pred"] is None and r["judge_score"] is None, r
        assert text in r["judge_error"] and "\n" not in r["judge_error"], r["judge_error"]
    # the errored prediction was not sent and is not a judge failure
    er = by[("99", "full")]
    assert (er["judge_pred"], er["judge_score"], er["judge_error"]) == (None, None, None)
    assert not server.by_marker("errored")

    # what the server saw
    assert len(server.by_marker("500x2")) == 3
    r429 = server.by_marker("429")
    assert len(r429) == 2 and r429[1]["t"] - r429[0]["t"] >= 0.95  # Retry-After: 1 honoured
    r429ms = server.by_marker("429ms")
    assert len(r429ms) == 2 and r429ms[1]["t"] - r429ms[0]["t"] >= 0.28  # retry-after-ms: 300 honoured
    assert len(server.by_marker("slow")) == 2  # timed out once, then answered
    assert len(server.by_marker("malformed")) == 2
    assert len(server.by_marker("range")) == 4 and len(server.by_marker("down")) == 4  # 1 + max_retries
    assert len(server.by_marker("bad400")) == 1  # a plain 4xx is not retried
    assert len(server.by_marker("ok")) == 1  # two records, one request
    assert len(server.by_marker("other")) == 2
    with server.lock:
        log = list(server.log)
    assert all(x["auth"] == f"Bearer {api_key}" for x in log)  # the key from the named variable is sent
    assert all(x["model"] == MODEL and x["temperature"] == 0 and x["roles"] == ["system", "user"] for x in log)
    assert 2 <= server.max_inflight <= 3  # parallel, but never more than `concurrency`

    assert (stats.total, stats.errored, stats.failures) == (len(recs), 1, 3)
    assert stats.judged == len(recs) - 1 - 3 and stats.cached == 0 and stats.deduplicated == 1
    assert stats.requests == len(log)
    assert stats.retries == len(log) - (len(recs) - 1 - 1)  # every request beyond the first per unique item
    assert elapsed < 20

    # a different served model: one warning per served name
    warns = [r for r in caplog.records if r.levelno == logging.WARNING and "served-snapshot-2" in r.getMessage()]
    assert len(warns) == 1 and MODEL in warns[0].getMessage()

    # the cache holds the successes only
    with JudgeCache(cache) as c:
        assert len(c) == stats.judged - stats.deduplicated
        k = cache_key(MODEL, load_template().sha256, recs[0]["question"], recs[0]["answer"], recs[0]["prediction"])
        row = c.get(k)
        assert (row.pred, row.score, row.raw_reply, row.served_model) == ("yes", 4, GOOD, MODEL)
        other = recs[markers.index("other")]
        k = cache_key(MODEL, load_template().sha256, other["question"], other["answer"], other["prediction"])
        assert c.get(k).served_model == "served-snapshot-2"
    (tmp_path / "judged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    judge.close()

    # re-judging the judged records: only the failures are sent again
    before = server.count()
    judge2 = make_judge(server.url, cache=str(cache))
    out2, stats2 = judge_records(out, judge2)
    with server.lock:
        new = server.log[before:]
    assert sorted({x["marker"] for x in new}) == ["bad400", "down", "range"]
    assert len(new) == 4 + 4 + 1
    assert stats2.cached == stats.judged and stats2.failures == 3  # cached counts records (both duplicates)
    assert stats2.judged == stats.judged
    keep = [k for k in out[0] if k not in JUDGE_FIELDS]
    for a, b in zip(out, out2):
        assert {k: a[k] for k in keep} == {k: b[k] for k in keep}
        if a["judge_error"] is None:
            assert (a["judge_pred"], a["judge_score"]) == (b["judge_pred"], b["judge_score"])

    # the server recovers: the next re-judge fixes the "down" item with a single request
    server.heal = True
    before = server.count()
    out3, stats3 = judge_records(out2, judge2)
    with server.lock:
        new = server.log[before:]
    assert sorted(x["marker"] for x in new) == ["bad400", "down"] + ["range"] * 4
    down = out3[markers.index("down")]
    assert (down["judge_pred"], down["judge_score"], down["judge_error"]) == ("yes", 4, None)
    assert stats3.failures == 2 and stats3.judged == stats.judged + 1
    (tmp_path / "judged.rejudged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out3))
    judge2.close()


# ============================================================================ server-level failures
def test_connection_refused_is_judge_unavailable_fast_and_cache_kept(server, api_key, tmp_path):
    cache = str(tmp_path / "cache.sqlite")
    recs = [pred_record(1, "<<m:ok>> first?", "a", "p1"), pred_record(2, "<<m:ok>> second?", "b", "p2")]
    out, _ = judge_records(recs[:1], make_judge(server.url, cache=cache))
    assert out[0]["judge_pred"] == "yes"

    url = f"http://127.0.0.1:{closed_port()}/v1"
    dead = OpenAIJudge(url, MODEL, api_key_env=KEY_VAR, cache=cache)  # default retries and backoff
    t0 = time.monotonic()
    with pytest.raises(JudgeUnavailable) as ei:
        judge_records(recs, dead)
    assert time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert url in msg.splitlines()[0] and api_key not in msg
    # the verdict obtained before is still cached, and serves a re-run without any request
    assert len(JudgeCache(cache)) == 1
    out, stats = judge_records(recs[:1], dead)
    assert out[0]["judge_pred"] == "yes" and stats.cached == 1 and stats.requests == 0


def test_unauthorized_aborts_with_clear_message(server, api_key, tmp_path):
    recs = [pred_record(i, f"<<m:{'auth' if i == 0 else 'sleep'}>> q{i}?", "a", f"p{i}") for i in range(6)]
    judge = make_judge(server.url, cache=str(tmp_path / "c.sqlite"), concurrency=2)
    with pytest.raises(JudgeAuthError) as ei:
        judge_records(recs, judge)
    msg = str(ei.value)
    assert "401" in msg and server.url in msg and KEY_VAR in msg and api_key not in msg
    assert len(server.by_marker("auth")) == 1  # not retried
    assert len(server.by_marker("sleep")) < 5  # the rest was abandoned


def test_unknown_model_404_aborts(server, api_key):
    judge = OpenAIJudge(server.url + "/nope", MODEL, api_key_env=KEY_VAR, max_retries=2, backoff=0.01)
    with pytest.raises(JudgeAuthError, match="404"):
        judge.judge("<<m:ok>> q?", "a", "p")


def test_api_key_variable_must_be_set(monkeypatch, server):
    monkeypatch.delenv(KEY_VAR, raising=False)
    with pytest.raises(JudgeConfigError, match=KEY_VAR):
        OpenAIJudge(server.url, MODEL, api_key_env=KEY_VAR)
    monkeypatch.setenv(KEY_VAR, "  ")
    with pytest.raises(JudgeConfigError, match="not set") as ei:
        OpenAIJudge(server.url, MODEL, api_key_env=KEY_VAR)
    # the message says how to use a keyless local server
    assert "--judge-api-key-env none" in str(ei.value)
    # a key passed where the variable NAME belongs is refused without being echoed
    with pytest.raises(JudgeConfigError) as ei:
        OpenAIJudge(server.url, MODEL, api_key_env="sk-live-abc123-def")
    assert "sk-live-abc123-def" not in str(ei.value)


def test_no_key_server_and_single_item_api(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = OpenAIJudge(server.url, MODEL, api_key_env=None, backoff=0.01, max_backoff=0.05)
    assert judge.judge("<<m:no>> q?", "a", "p") == ("no", 1)
    assert server.log[-1]["auth"] == f"Bearer {judges.NO_KEY_PLACEHOLDER}"
    with pytest.raises(judges.JudgeError, match="outside 0..5"):
        OpenAIJudge(server.url, MODEL, api_key_env=None, max_retries=1, backoff=0.01).judge("<<m:range>> q?", "a", "p")
    assert len(server.by_marker("range")) == 2
    assert OpenAIJudge(server.url, "Qwen/Qwen2.5-7B-Instruct", api_key_env=None).label == \
        "openai-Qwen-Qwen2.5-7B-Instruct"


def test_bad_judge_arguments(api_key):
    with pytest.raises(JudgeConfigError, match="http"):
        OpenAIJudge("127.0.0.1:8000/v1", MODEL, api_key_env=KEY_VAR)
    with pytest.raises(JudgeConfigError, match="concurrency"):
        OpenAIJudge("http://127.0.0.1:1/v1", MODEL, api_key_env=KEY_VAR, concurrency=0)
    with pytest.raises(JudgeConfigError, match="model"):
        OpenAIJudge("http://127.0.0.1:1/v1", " ", api_key_env=KEY_VAR)


# ============================================================================ reply parsing
@pytest.mark.parametrize("text,want", [
    ("{'pred': 'yes', 'score': 4}", ("yes", 4)),
    ('{"pred": "no", "score": 0}', ("no", 0)),
    ("```python\n{'pred': 'Yes', 'score': 5}\n```", ("yes", 5)),
    ('```json\n{"pred": "YES", "score": 3.0}\n```', ("yes", 3)),
    ("My evaluation: {'pred': 'no', 'score': '2'}. Hope this helps.", ("no", 2)),
    ("{'pred': 'no', 'score': 1, 'reason': 'different {object}'}", ("no", 1)),
    ("{'pred': 'yes', 'score': 4}\n{'pred': 'yes', 'score': 4}", ("yes", 4)),
    ("  {'Pred': ' yes. ', 'Score': 5}  ", ("yes", 5)),
])
def test_parse_reply_accepts(text, want):
    assert parse_reply(text) == want


@pytest.mark.parametrize("text,why", [
    ("", "empty"),
    ("yes, score 4", "no {'pred'"),
    ("{'pred': 'yes'}", "lacks 'score'"),
    ("{'score': 3}", "lacks 'pred'"),
    ("{'pred': 'maybe', 'score': 3}", "'yes' or 'no'"),
    ("{'pred': 'yes', 'score': 7}", "outside 0..5"),
    ("{'pred': 'no', 'score': -1}", "outside 0..5"),
    ("{'pred': 'yes', 'score': 4.8}", "integer"),
    ("{'pred': 'yes', 'score': 'four'}", "integer"),
    ("{'pred': 'yes', 'score': True}", "integer"),
    ("{'pred': 'yes', 'score': 4} or {'pred': 'no', 'score': 1}", "several"),
])
def test_parse_reply_rejects(text, why):
    with pytest.raises(MalformedReply, match=re.escape(why)):
        parse_reply(text)


def test_retry_after_header_forms():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == pytest.approx(0.25)
    now = time.time()
    assert retry_after_seconds({"retry-after": formatdate(now + 5, usegmt=True)}, now=now) == pytest.approx(5, abs=1)
    assert retry_after_seconds({"retry-after": formatdate(now - 50, usegmt=True)}, now=now) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


# ============================================================================ templates
def test_shipped_template_protocol_and_hash():
    t = load_template()
    assert Path(t.path).is_file() and t.path.endswith("video_chatgpt_qa.txt")
    import hashlib

    assert t.sha256 == hashlib.sha256(Path(t.path).read_bytes()).hexdigest()
    msgs = t.render("What is {answer} doing?", "a cat", "a dog")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    # the three values are in; placeholder-like text inside a value is not substituted again
    assert "What is {answer} doing?" in user and "a cat" in user and "a dog" in user
    assert "{question}" not in user and "{prediction}" not in user
    for word in ("'pred'", "'score'", "'yes'", "'no'", "0", "5", "integer"):
        assert word in user


def test_custom_template_and_errors(tmp_path):
    good = tmp_path / "mine.txt"
    good.write_text("# comment\n[system]\nBe strict.\n[user]\nQ={question} A={answer} P={prediction} {'pred':..}\n")
    t = load_template(good)
    assert t.system == "Be strict." and t.sha256 != load_template().sha256 and t.path == str(good)
    assert t.render("q", "a", "p")[1]["content"] == "Q=q A=a P=p {'pred':..}"

    cases = {
        "nouser.txt": ("[system]\nx {question} {answer} {prediction}\n", "[user]"),
        "noph.txt": ("[system]\nx\n[user]\n{question} {answer}\n", "{prediction}"),
        "twice.txt": ("[system]\nx\n[user]\n{question}\n[user]\n{answer} {prediction}\n", "twice"),
        "stray.txt": ("hello\n[system]\nx\n[user]\n{question} {answer} {prediction}\n", "outside any section"),
        "empty.txt": ("[system]\n\n[user]\n{question} {answer} {prediction}\n", "empty"),
    }
    for name, (text, what) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(TemplateError) as ei:
            load_template(tmp_path / name)
        assert name in str(ei.value) and what in str(ei.value), str(ei.value)
    with pytest.raises(TemplateError, match="cannot read"):
        load_template(tmp_path / "missing.txt")


def test_template_hash_is_part_of_the_cache_key(server, api_key, tmp_path):
    cache = str(tmp_path / "c.sqlite")
    custom = tmp_path / "t.txt"
    custom.write_text("[system]\nGrade.\n[user]\n{question} | {answer} | {prediction}\n")
    recs = [pred_record(1, "<<m:ok>> q?", "a", "p")]
    judge_records(recs, make_judge(server.url, cache=cache))
    _, s1 = judge_records(recs, make_judge(server.url, cache=cache))
    _, s2 = judge_records(recs, make_judge(server.url, cache=cache, template=str(custom)))
    out, _ = judge_records(recs, make_judge(server.url, cache=cache, template=str(custom)))
    assert (s1.cached, s1.requests) == (1, 0) and (s2.cached, s2.requests) == (0, 1)
    assert out[0]["judge"]["template_sha256"] == load_template(custom).sha256


# ============================================================================ offline judge
@pytest.mark.parametrize("answer,prediction,want", [
    ("dog", "dog", True),
    ("Dog.", "the dog", True),
    ("dog", "A dog is running in the park", True),
    ("dog", "doggy", False),
    ("hot dog", "he eats a hot   dog!", True),
    ("running", "he is run", False),
    ("cat", "a dog", False),
    ("the", "the", False),  # nothing left to match
    ("t-shirt", "a white t shirt", True),
    ("café", "Café au lait", True),
])
def test_offline_match(answer, prediction, want):
    assert offline_match(answer, prediction) is want


def test_offline_judge_records():
    assert normalize_answer("  The  Man's  HAT, an apple! ") == "man s hat apple"
    j = OfflineJudge()
    assert j.info() == {"kind": "offline", "model": "offline-match", "template_sha256": None}
    assert j.label == "offline"
    recs = [pred_record(1, "q", "dog", "a dog"), pred_record(2, "q", "cat", "a dog"),
            pred_record(3, "q", "x", "", error="VideoError: missing")]
    out, stats = judge_records(recs, j)
    assert [(r["judge_pred"], r["judge_score"], r["judge_error"]) for r in out] == [
        ("yes", 5, None), ("no", 0, None), (None, None, None)]
    assert all(r["judge"] == j.info() for r in out)
    assert (stats.judged, stats.errored, stats.failures, stats.requests) == (2, 1, 0, 0)
    assert stats.to_dict()["judged"] == 2 and "lock" not in json.dumps(stats.to_dict())
    # re-judging judged records replaces the judge fields instead of duplicating them
    again, _ = judge_records(out, j)
    assert again == out
    with pytest.raises(judges.JudgeInputError, match="prediction"):
        judge_records([{"question": "q", "answer": "a", "error": None}], j)


# ============================================================================ cache
def test_cache_threads_wal_and_bad_file(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    c = JudgeCache(path)
    keys = [cache_key("m", "t", f"q{i}", "a", "p") for i in range(200)]
    assert len(set(keys)) == 200 and cache_key("m", "t", "a", "b", "c") != cache_key("m", "t", "ab", "", "c")

    def put(ks):
        for k in ks:
            c.put(k, judge_model="m", template_sha256="t", pred="yes", score=3, raw_reply="{}", served_model="m")

    threads = [threading.Thread(target=put, args=(keys[i::4],)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(c) == 200 and c.get(keys[7]).score == 3 and c.get("nope") is None
    with pytest.raises(ValueError):
        c.put(keys[0], judge_model="m", template_sha256="t", pred="yes", score=9)
    c.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheError, match="bad.sqlite"):
        JudgeCache(bad)
    assert os.path.exists(bad)


def test_judge_stats_summary():
    s = JudgeStats(total=3)
    s.add(judged=2, failures=1)
    assert "2 judged" in s.summary() and "1 judge failures" in s.summary()


# ============================================================================ 200 responses that are not completions
BROKEN_200 = {"truncated": "not valid JSON", "nochoices": "no 'choices'", "nullcontent": "without message content",
              "html": "text/html"}


def test_broken_200_bodies_are_retried_then_judge_failures(server, api_key, tmp_path):
    recs = [pred_record(i, f"<<m:{mk}>> q{i}?", "a", f"p{i}") for i, mk in enumerate([*BROKEN_200, "truncated-once"])]
    judge = make_judge(server.url, cache=str(tmp_path / "c.sqlite"), max_retries=2)
    out, stats = judge_records(recs, judge)  # completes: nothing escapes from a worker
    judge.close()
    by = {r["question"].split()[0][4:-2]: r for r in out}
    for mk, what in BROKEN_200.items():
        r = by[mk]
        # a judge failure, never a "no"; the error names the server and what was wrong with the body
        assert (r["judge_pred"], r["judge_score"]) == (None, None), r
        assert server.url in r["judge_error"] and what in r["judge_error"] and "HTTP 200" in r["judge_error"], r
        assert "\n" not in r["judge_error"] and "(after 3 attempts)" in r["judge_error"]
        assert len(server.by_marker(mk)) == 3  # retried like a 5xx: 1 + max_retries
    healed = by["truncated-once"]
    assert (healed["judge_pred"], healed["judge_score"], healed["judge_error"]) == ("yes", 4, None)
    assert len(server.by_marker("truncated-once")) == 2
    assert (stats.failures, stats.judged) == (len(BROKEN_200), 1)


def _judge_cli_run(tmp_path, questions):
    """A run directory with merged predictions for ``questions`` (no model needed)."""
    from video_eval.runner import PredictionWriter, _open_spec

    run = tmp_path / "run"
    run.mkdir()
    _open_spec(run, {"schema": 1, "dataset": {"name": "msvd", "split": "test", "limit": None,
                                               "size": len(questions), "total": len(questions)},
                     "model": "testbed", "configs": ["full"], "num_frames": 8, "frame_strategy": "uniform",
                     "max_new_tokens": 8, "prompt_template": "t", "dtype": None, "batch_size": 4, "seed": 0,
                     "created": "now"})
    recs = [dict(pred_record(i, q, "a", f"p{i}"), index=i) for i, q in enumerate(questions)]
    PredictionWriter(run / "predictions.rank0.jsonl").write(recs)
    return run


def test_cli_judge_completes_on_a_broken_200_and_stores_served_model(server, api_key, tmp_path, capsys):
    from video_eval.cli import main

    run = _judge_cli_run(tmp_path, ["<<m:ok>> q0?", "<<m:truncated>> q1?", "<<m:other>> q2?"])
    argv = ["judge", str(run), "--judge", "openai", "--judge-base-url", server.url, "--judge-model", MODEL,
            "--judge-api-key-env", KEY_VAR, "--judge-retries", "1", "--judge-timeout", "5"]
    assert main([*argv, "--judge-cache", str(tmp_path / "c.sqlite")]) == 0
    out = capsys.readouterr().out
    res = json.loads((run / f"results.openai-{MODEL}.json").read_text())
    m = res["metrics"]["full"]
    assert (m["judged"], m["judge_failures"], m["accuracy"]) == (2, 1, 1.0)  # the failure is not a "no"
    assert f"a judge failure: the judge server at {server.url} answered HTTP 200" in out
    assert "everything else comes from the cache" in out
    # the served-model mismatch is in the results, not only in a log line
    assert res["judge_stats"]["served_models"] == {MODEL: 1, "served-snapshot-2": 1}
    assert len(res["warnings"]) == 1 and "served-snapshot-2" in res["warnings"][0] and MODEL in res["warnings"][0]
    assert "WARNING: the judge server answered 1 verdict with model 'served-snapshot-2'" in out
    # re-judged from the cache: the served model still counted, the warning still stored
    assert main([*argv, "--judge-cache", str(tmp_path / "c.sqlite")]) == 0
    res = json.loads((run / f"results.openai-{MODEL}.json").read_text())
    assert res["judge_stats"]["served_models"]["served-snapshot-2"] == 1 and res["warnings"]
    # with the cache off, the hint does not promise a cache
    capsys.readouterr()
    assert main([*argv, "--judge-cache", "none"]) == 0
    out = capsys.readouterr().out
    assert "comes from the cache" not in out and "cache is off" in out
