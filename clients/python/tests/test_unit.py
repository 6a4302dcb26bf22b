"""What the client sends and reads, without a sidecar: usage shapes, the
record, connection reuse, and Python 3.9 syntax."""

from __future__ import annotations

import ast
import asyncio
import datetime
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import unittest
from types import SimpleNamespace as NS
from typing import Any, Dict, List

import llmusage
from llmusage import LLMUsageTracker, usage_fields


class UsageFieldsTest(unittest.TestCase):
    def test_openai_and_groq_chat_completions(self) -> None:
        obj = NS(prompt_tokens=100, completion_tokens=20, total_tokens=120,
                 prompt_tokens_details=NS(cached_tokens=64, audio_tokens=0),
                 completion_tokens_details=NS(reasoning_tokens=8, audio_tokens=0))
        want = {"prompt_tokens": 100, "completion_tokens": 20, "cached_tokens": 64, "reasoning_tokens": 8}
        self.assertEqual(usage_fields(obj), want)
        as_dict = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                   "prompt_tokens_details": {"cached_tokens": 64}, "completion_tokens_details": {"reasoning_tokens": 8}}
        self.assertEqual(usage_fields(as_dict), want)
        # Groq: no details, timing fields besides.
        groq = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "queue_time": 0.1,
                "prompt_tokens_details": None}
        self.assertEqual(usage_fields(groq), {"prompt_tokens": 5, "completion_tokens": 7})

    def test_anthropic_cache_is_folded_into_prompt_tokens(self) -> None:
        obj = NS(input_tokens=10, output_tokens=50, cache_read_input_tokens=1000, cache_creation_input_tokens=200)
        self.assertEqual(usage_fields(obj), {"prompt_tokens": 1210, "completion_tokens": 50, "cached_tokens": 1000,
                                             "cache_write_tokens": 200})
        self.assertEqual(usage_fields({"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": None}),
                         {"prompt_tokens": 3, "completion_tokens": 4})

    def test_openai_responses_input_includes_the_cache(self) -> None:
        obj = {"input_tokens": 300, "output_tokens": 40, "input_tokens_details": {"cached_tokens": 256},
               "output_tokens_details": {"reasoning_tokens": 30}}
        self.assertEqual(usage_fields(obj), {"prompt_tokens": 300, "completion_tokens": 40, "cached_tokens": 256,
                                             "reasoning_tokens": 30})

    def test_unknown_shapes_are_refused(self) -> None:
        for bad in (None, {}, NS(tokens=3)):
            with self.subTest(bad=bad), self.assertRaises(TypeError):
                usage_fields(bad)


class KeyFingerprintTest(unittest.TestCase):
    def test_the_sidecars_fingerprint(self) -> None:
        # proxy.KeyFingerprint's and provider.KeyFingerprint's tests pin the same value.
        self.assertEqual(llmusage.key_fingerprint(" sk-proj-abc123 "), "4ecf4d81")
        self.assertEqual(llmusage.key_fingerprint(""), "")
        self.assertNotEqual(llmusage.key_fingerprint("sk-proj-abc124"), "4ecf4d81")

    def test_only_rate_limit_headers_are_kept(self) -> None:
        got = llmusage.provider_ratelimit_headers({
            "X-RateLimit-Limit-Tokens": "150000", "anthropic-ratelimit-requests-reset": "2026-12-08T00:00:01Z",
            "x-ratelimitbysize-limit-minute": "500000", "ratelimitbysize-reset": "29", "Retry-After": "2",
            "retry-after-ms": "1500", "authorization": "Bearer sk", "x-request-id": "req_1"})
        self.assertEqual(got, {"x-ratelimit-limit-tokens": "150000", "anthropic-ratelimit-requests-reset": "2026-12-08T00:00:01Z",
                               "x-ratelimitbysize-limit-minute": "500000", "ratelimitbysize-reset": "29",
                               "retry-after": "2", "retry-after-ms": "1500"})


class FakeSidecar(http.server.ThreadingHTTPServer):
    """Answers 202 to every POST and keeps the bodies and client ports."""

    def __init__(self) -> None:
        self.bodies: List[Any] = []
        self.clients: List[int] = []
        self.headers: List[Dict[str, str]] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.server_address[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server: FakeSidecar = self.server  # type: ignore[assignment]
        server.bodies.append(body)
        server.clients.append(self.client_address[1])
        server.headers.append(dict(self.headers))
        if self.path == "/v1/check":
            out = json.dumps({"allowed": True, "request_id": body["request_id"], "limits": []}).encode()
            self.send_response(200)
        else:
            out = b'{"accepted":1}'
            self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


class RequestTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.server = FakeSidecar()
        self.tracker = LLMUsageTracker(self.server.url, token="tok", pool_size=2)

    async def asyncTearDown(self) -> None:
        await self.tracker.aclose()
        await asyncio.get_running_loop().run_in_executor(None, self.server.shutdown)
        self.server.server_close()

    async def test_record_fields(self) -> None:
        when = datetime.datetime(2026, 1, 2, 3, 4, 5)
        rid = await self.tracker.log_llm_call("u1", "claude-3-opus", 30, 20, 10, {"provider": "anthropic"},
                                              latency_ms=12.5, success=False, error_type="overloaded",
                                              cached_tokens=5, cache_write_tokens=2, cost_usd=0.25, timestamp=when)
        self.assertEqual(self.server.bodies, [{
            "user_id": "u1", "model": "claude-3-opus", "tokens_used": 30, "prompt_tokens": 20,
            "completion_tokens": 10, "cached_tokens": 5, "cache_write_tokens": 2, "latency_ms": 12.5,
            "status": "error", "error_type": "overloaded", "cost_usd": 0.25,
            "timestamp": "2026-01-02T03:04:05+00:00", "metadata": {"provider": "anthropic"}, "request_id": rid}])
        self.assertEqual(self.server.headers[0]["Authorization"], "Bearer tok")
        self.assertEqual(len(rid), 36)
        self.assertEqual(rid[14], "7")  # a UUID version 7

    async def test_call_sends_the_checks_request_id_and_anthropic_cache_writes(self) -> None:
        async with self.tracker.call("u2", "claude-3-5-sonnet-latest", "anthropic",
                                     {"prompt_tokens": 100, "max_tokens": 50}) as call:
            call.usage(NS(input_tokens=10, output_tokens=5, cache_read_input_tokens=0, cache_creation_input_tokens=90))
            call.set(metadata={"route": "/x"})
        check, rec = self.server.bodies
        self.assertEqual(check, {"user_id": "u2", "model": "claude-3-5-sonnet-latest", "provider": "anthropic",
                                 "request_id": call.request_id, "prompt_tokens": 100, "max_tokens": 50})
        self.assertEqual(rec["request_id"], call.request_id)
        self.assertEqual((rec["prompt_tokens"], rec["cache_write_tokens"], rec["metadata"]), (100, 90, {"route": "/x"}))
        self.assertNotIn("cached_tokens", rec)

    async def test_raw_response_sends_usage_and_rate_limit_headers_never_the_key(self) -> None:
        # The shape of openai's and anthropic's with_raw_response answers:
        # headers, parse(), and the request as it went out.
        completion = NS(id="x", usage=NS(prompt_tokens=12, completion_tokens=3))
        raw = NS(headers={"x-ratelimit-limit-requests": "60", "X-RateLimit-Remaining-Requests": "59",
                          "x-ratelimit-reset-requests": "1s", "set-cookie": "secret", "content-type": "application/json"},
                 parse=lambda: completion,
                 http_request=NS(headers={"Authorization": "Bearer sk-proj-abc123", "Content-Type": "application/json"}))
        async with self.tracker.call("u4", "gpt-4o") as call:
            call.usage(raw)
        rec = self.server.bodies[-1]
        self.assertEqual((rec["prompt_tokens"], rec["completion_tokens"]), (12, 3))
        self.assertEqual(rec["provider_ratelimit"], {
            "key": "4ecf4d81",  # as the Go tests and the runbook compute it
            "headers": {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
                        "x-ratelimit-reset-requests": "1s"}})
        # Relative resets count from the record's timestamp: when the
        # headers came, not when a retried record reaches the sidecar.
        self.assertIn("timestamp", rec)
        self.assertNotIn("sk-proj-abc123", json.dumps(self.server.bodies))

    async def test_a_provider_429_raised_in_the_block_sends_its_headers(self) -> None:
        class RateLimitError(Exception):  # openai.RateLimitError's shape: .response, an httpx.Response
            def __init__(self) -> None:
                super().__init__("429")
                self.response = NS(headers={"retry-after": "20", "anthropic-ratelimit-tokens-remaining": "0"},
                                   request=NS(headers={"x-api-key": "sk-ant-one"}))

        with self.assertRaises(RateLimitError):
            async with self.tracker.call("u5", "claude-sonnet-4-5"):
                raise RateLimitError()
        rec = self.server.bodies[-1]
        self.assertEqual((rec["status"], rec["error_type"]), ("error", "RateLimitError"))
        self.assertEqual(rec["provider_ratelimit"], {"key": llmusage.key_fingerprint("sk-ant-one"),
                                                     "headers": {"retry-after": "20", "anthropic-ratelimit-tokens-remaining": "0"}})

    async def test_provider_headers_explicitly_and_whole_responses(self) -> None:
        async with self.tracker.call("u6", "llama-3.1-8b-instant", "groq") as call:
            call.usage(NS(usage=NS(prompt_tokens=1, completion_tokens=1)))  # a whole (parsed) response
            call.provider_headers([("x-ratelimit-reset-tokens", "1d2h"), ("server", "x")])
        rec = self.server.bodies[-1]
        self.assertEqual(rec["provider_ratelimit"], {"headers": {"x-ratelimit-reset-tokens": "1d2h"}})
        self.assertEqual(rec["prompt_tokens"], 1)
        # No rate-limit header: no provider_ratelimit, and no timestamp.
        async with self.tracker.call("u6", "gpt-4o") as call:
            call.usage({"usage": {"prompt_tokens": 2, "completion_tokens": 2}})
            call.provider_headers({"content-type": "application/json"})
        rec = self.server.bodies[-1]
        self.assertNotIn("provider_ratelimit", rec)
        self.assertNotIn("timestamp", rec)
        await self.tracker.log_llm_call("u6", "gpt-4o", provider_ratelimit={"requests": {"limit": 5}})
        self.assertEqual(self.server.bodies[-1]["provider_ratelimit"], {"requests": {"limit": 5}})

    async def test_connections_are_reused(self) -> None:
        for _ in range(5):
            await self.tracker.log_llm_call("u3", "gpt-4o", prompt_tokens=1)
        sync = functools.partial(self.tracker.log_llm_call_sync, "u3", "gpt-4o", prompt_tokens=1)
        for _ in range(5):
            await asyncio.get_running_loop().run_in_executor(None, sync)
        self.assertEqual(len(self.server.clients), 10)
        self.assertEqual(len(set(self.server.clients)), 1, self.server.clients)


class DrainTest(unittest.IsolatedAsyncioTestCase):
    """The retry buffer against a sidecar that could not take a record at
    first: close() and an unexpected error of a retry must not lose it."""

    async def asyncSetUp(self) -> None:
        self.server = FakeSidecar()
        self.lost: List[Any] = []
        self.tracker = LLMUsageTracker(self.server.url, on_lost=lambda records, why: self.lost.append(why))
        self.transport = self.tracker._http()
        self.real = self.transport.request

    async def asyncTearDown(self) -> None:
        await self.tracker.aclose(timeout=0)
        await asyncio.get_running_loop().run_in_executor(None, self.server.shutdown)
        self.server.server_close()

    def delivered(self) -> List[str]:
        out = []
        for body in self.server.bodies:
            out += [r["request_id"] for r in (body if isinstance(body, list) else [body])]
        return out

    async def test_close_delivers_what_is_buffered(self) -> None:
        # The sidecar takes records only once close() has begun: close must
        # still deliver the buffered one in its timeout, not report it lost.
        tracker = self.tracker

        def request(method: str, path: str, body: Any) -> Any:
            if path == "/v1/calls" and not tracker._closed:
                raise llmusage._Unreachable("down")
            return self.real(method, path, body)

        self.transport.request = request  # type: ignore[method-assign]
        with self.assertLogs("llmusage", "WARNING"):
            rid = await tracker.log_llm_call("drain-user", "gpt-4o", prompt_tokens=1)
        self.assertEqual(tracker.pending, 1)
        await tracker.aclose(timeout=10)
        self.assertEqual((tracker.lost, tracker.pending, self.lost), (0, 0, []))
        self.assertEqual(self.delivered(), [rid])

    async def test_an_unexpected_error_of_a_retry_does_not_stop_the_retries(self) -> None:
        # A retry that fails in a way the transport does not expect (here a
        # header value http.client refuses, as a token with a newline gives)
        # is retried later: the retry thread must not die with records left.
        calls: List[str] = []

        def request(method: str, path: str, body: Any) -> Any:
            calls.append(path)
            if len(calls) == 1:
                raise llmusage._Unreachable("down")
            if len(calls) == 2:
                raise ValueError("Invalid header value b'Bearer a\\nb'")
            return self.real(method, path, body)

        self.transport.request = request  # type: ignore[method-assign]
        with self.assertLogs("llmusage", "WARNING"):
            rid = await self.tracker.log_llm_call("drain-user", "gpt-4o", prompt_tokens=1)
            self.assertTrue(await self.tracker.aflush(timeout=10), "the buffer was not drained")
        self.assertEqual((self.tracker.lost, self.delivered()), (0, [rid]))


class ExitTest(unittest.TestCase):
    def test_records_buffered_at_exit_are_delivered(self) -> None:
        # A script logs a record the sidecar cannot take until the exit
        # begins, and ends: the exit must deliver it, not report it lost.
        server = FakeSidecar()
        script = textwrap.dedent("""\
            import asyncio, llmusage
            tracker = llmusage.llm_usage_tracker
            transport = tracker._http()
            real = transport.request

            def request(method, path, body):
                if path == "/v1/calls" and not tracker._closed:
                    raise llmusage._Unreachable("down")
                return real(method, path, body)

            transport.request = request
            print(asyncio.run(tracker.log_llm_call("exit-user", "gpt-4o", prompt_tokens=1)))
            """)
        try:
            run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                                 env=dict(os.environ, LLMUSAGE_URL=server.url,
                                          PYTHONPATH=os.path.dirname(os.path.dirname(llmusage.__file__))))
        finally:
            server.shutdown()
            server.server_close()
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertNotIn("lost", run.stderr)
        self.assertEqual([r["request_id"] for b in server.bodies for r in b], [run.stdout.strip()])


class ForkTest(unittest.TestCase):
    """A tracker used before fork (gunicorn --preload, multiprocessing):
    threads do not survive fork and kept-alive sockets would be shared."""

    def setUp(self) -> None:
        self.server = FakeSidecar()
        self.tracker = LLMUsageTracker(self.server.url, pool_size=2)

    def tearDown(self) -> None:
        self.tracker.close(timeout=0)
        self.server.shutdown()
        self.server.server_close()

    @unittest.skipUnless(hasattr(os, "fork"), "no fork here")
    def test_a_tracker_used_before_fork_works_in_the_child(self) -> None:
        async def use() -> None:
            await asyncio.gather(*(self.tracker.log_llm_call("fork-parent", "gpt-4o", prompt_tokens=1)
                                   for _ in range(4)))

        asyncio.run(use())
        self.tracker.log_llm_call_sync("fork-parent", "gpt-4o", prompt_tokens=1)
        parent_ports = set(self.server.clients)
        pid = os.fork()
        if pid == 0:  # the child: report by exit code only
            code = 1
            try:
                async def child() -> None:
                    await asyncio.wait_for(self.tracker.log_llm_call("fork-child", "gpt-4o", prompt_tokens=1), 10)
                    async with self.tracker.call("fork-child", "gpt-4o"):
                        pass

                asyncio.run(child())
                self.tracker.log_llm_call_sync("fork-child", "gpt-4o", prompt_tokens=1)
                self.tracker.close(timeout=5)
                code = 0 if self.tracker.lost == 0 else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                self.fail("the child hung: the tracker's threads did not survive fork")
            time.sleep(0.02)
        self.assertEqual(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode")
                         else status >> 8, 0)
        child = [(b, port) for b, port in zip(self.server.bodies, self.server.clients)
                 if isinstance(b, dict) and b.get("user_id") == "fork-child"]
        self.assertEqual(len(child), 4, self.server.bodies)  # a record, a check and its record, a record
        # The child opened its own connections, not the parent's kept-alive ones.
        self.assertFalse({port for _, port in child} & parent_ports, (child, parent_ports))
        # And the parent still works.
        self.tracker.log_llm_call_sync("fork-parent", "gpt-4o", prompt_tokens=1)


class SourceTest(unittest.TestCase):
    def test_python_3_9_syntax(self) -> None:
        path = llmusage.__file__
        with open(path, encoding="utf-8") as f:
            ast.parse(f.read(), path, feature_version=(3, 9))

    def test_standard_library_only(self) -> None:
        import sys
        with open(llmusage.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        stdlib = getattr(sys, "stdlib_module_names", None)  # Python 3.10+
        if stdlib is None:  # 3.9: a module of the standard library is built in or lives in its directory
            import importlib.util
            import sysconfig
            where = os.path.realpath(sysconfig.get_paths()["stdlib"])
            def in_stdlib(name: str) -> bool:
                origin = os.path.realpath(importlib.util.find_spec(name).origin or "")
                return origin.startswith(where + os.sep) and "-packages" + os.sep not in origin

            stdlib = {n for n in names if n in sys.builtin_module_names or in_stdlib(n)}
        self.assertLessEqual(names, set(stdlib))


if __name__ == "__main__":
    unittest.main()
