"""LLMUsageTracker against a real sidecar: reads, checks, call(), errors,
retries, the unix socket and the token."""

from __future__ import annotations

import asyncio
import os
import tempfile
import unittest
import unittest.mock
from types import SimpleNamespace as NS
from typing import Any, Dict, List

import llmusage
from llmusage import InvalidRequest, LLMUsageError, LLMUsageTracker, RateLimited
from sidecar import Sidecar, free_port, wait_for

LIMITS = """\
limits:
  - user_id: rl-user
    limit_type: minute
    requests: 3
  - user_id: call-user
    limit_type: minute
    requests: 5
  - user_id: once-user
    limit_type: minute
    requests: 1
"""


class TrackerTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.sidecar = Sidecar(limits=LIMITS).start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.sidecar.close()

    async def asyncSetUp(self) -> None:
        self.tracker = LLMUsageTracker(self.sidecar.url)

    async def asyncTearDown(self) -> None:
        await self.tracker.aclose()

    def rate_limit(self, user: str, limit_type: str = "minute") -> Dict[str, Any]:
        status, answer = self.sidecar.get("/api/llm/usage/rate-limit/%s?user_id=%s" % (limit_type, user))
        self.assertEqual(status, 200, answer)
        return answer

    async def test_check_rate_limit_is_the_get_answer_and_turns_false_at_the_limit(self) -> None:
        for i in range(3):
            answer = await self.tracker.check_rate_limit(user_id="rl-user", limit_type="minute")
            self.assertEqual(answer, self.rate_limit("rl-user"))
            self.assertEqual((answer["can_call"], answer["used"], answer["limit"]), (True, i, 3))
            await self.tracker.log_llm_call(user_id="rl-user", model="gpt-4o", prompt_tokens=1, completion_tokens=1)
        answer = await self.tracker.check_rate_limit(user_id="rl-user", limit_type="minute")
        self.assertEqual(answer, self.rate_limit("rl-user"))
        self.assertEqual((answer["can_call"], answer["remaining"]), (False, 0))
        # Reading consumes nothing.
        self.assertEqual((await self.tracker.check_rate_limit("rl-user"))["used"], 3)
        # Every type at once, as GET /api/llm/usage/rate-limits answers.
        status, direct = self.sidecar.get("/api/llm/usage/rate-limits?user_id=rl-user")
        self.assertEqual(status, 200)
        self.assertEqual(await self.tracker.get_rate_limits("rl-user"), direct)
        # A user no rule limits.
        self.assertEqual((await self.tracker.check_rate_limit("nobody", "hour"))["limit"], None)

    async def test_unknown_limit_type_is_a_value_error(self) -> None:
        with self.assertRaises(InvalidRequest) as cm:
            await self.tracker.check_rate_limit("rl-user", "fortnight")
        self.assertIsInstance(cm.exception, ValueError)
        self.assertIn("minute", str(cm.exception))

    async def test_invalid_record_raises_naming_the_fields(self) -> None:
        with self.assertRaises(InvalidRequest) as cm:
            await self.tracker.log_llm_call(user_id="bad-user", model="gpt-4o", prompt_tokens=-1,
                                            completion_tokens=5, tokens_used=1)
        err = cm.exception
        self.assertIsInstance(err, ValueError)
        self.assertEqual(err.status, 400)
        self.assertIn("prompt_tokens", err.fields)
        self.assertIn("prompt_tokens", str(err))
        self.assertEqual(self.tracker.pending, 0)  # not retried: it would be refused again
        with self.assertRaises(TypeError):  # a typo fails at once, not at the sidecar
            await self.tracker.log_llm_call(user_id="bad-user", model="gpt-4o", prompt_token=1)

    async def test_call_checks_times_and_records_once(self) -> None:
        usage = NS(prompt_tokens=120, completion_tokens=30, total_tokens=150,
                   prompt_tokens_details=NS(cached_tokens=40), completion_tokens_details=NS(reasoning_tokens=10))
        async with self.tracker.call("call-user", "gpt-4o", estimate={"prompt_tokens": 100, "max_tokens": 200},
                                     metadata={"route": "/chat"}) as call:
            self.assertTrue(call.check["allowed"])
            call.usage(usage)
        self.assertIsNotNone(call.latency_ms)
        rows = self.sidecar.stored_once_marked("call-user", "sentinel")
        self.assertEqual(len(rows), 1, rows)
        row = rows[0]
        self.assertEqual(row["request_id"], call.request_id)
        self.assertEqual((row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"],
                          row["reasoning_tokens"], row["provider"], row["status"]),
                         (120, 30, 40, 10, "openai", "success"))
        self.assertAlmostEqual(row["latency_ms"], call.latency_ms, places=3)  # stored to the microsecond
        self.assertEqual(row["metadata"], {"route": "/chat"})
        # The check and its record are one request of the bucket, not two
        # (plus the sentinel, a record without a check).
        self.assertEqual(self.rate_limit("call-user")["used"], 2)

    async def test_provider_rate_limit_headers_reach_the_gauges(self) -> None:
        completion = NS(usage=NS(input_tokens=10, output_tokens=2))
        raw = NS(headers={"anthropic-ratelimit-input-tokens-limit": "80000",
                          "anthropic-ratelimit-input-tokens-remaining": "79000",
                          "anthropic-ratelimit-input-tokens-reset": "2099-01-01T00:00:00Z", "retry-after": "30"},
                 parse=lambda: completion, http_request=NS(headers={"x-api-key": "sk-ant-e2e"}))
        async with self.tracker.call("prl-user", "claude-e2e-model") as call:
            call.usage(raw)
        fp = llmusage.key_fingerprint("sk-ant-e2e")
        labels = 'key="%s",model="claude-e2e-model",provider="anthropic"' % fp
        text = self.sidecar.metrics_text()
        self.assertIn('llm_provider_ratelimit_limit{%s,resource="input_tokens"} 80000\n' % labels, text)
        self.assertIn('llm_provider_ratelimit_remaining{%s,resource="input_tokens"} 79000\n' % labels, text)
        self.assertIn("llm_provider_retry_after_seconds{%s} " % labels, text)
        self.assertNotIn("sk-ant-e2e", text)
        # The figures are not stored; the record is.
        rows = self.sidecar.stored_once_marked("prl-user", "sentinel")
        self.assertEqual([(r["prompt_tokens"], r["provider"]) for r in rows], [(10, "anthropic")])
        self.assertNotIn("provider_ratelimit", rows[0])

    async def test_invalid_provider_ratelimit_is_refused_naming_the_field(self) -> None:
        with self.assertRaises(InvalidRequest) as ctx:
            await self.tracker.log_llm_call("prl-user", "gpt-4o", provider_ratelimit={"requests": {"limit": -1}})
        self.assertEqual(ctx.exception.fields, ["provider_ratelimit.requests.limit"])

    async def test_call_over_the_limit_raises_rate_limited(self) -> None:
        async with self.tracker.call("once-user", "claude-3-5-haiku-latest", provider="anthropic", estimate=50) as c:
            c.usage({"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100,
                     "cache_creation_input_tokens": 20})
        ran = False
        with self.assertRaises(RateLimited) as cm:
            async with self.tracker.call("once-user", "claude-3-5-haiku-latest", estimate=50):
                ran = True
        self.assertFalse(ran)
        self.assertGreaterEqual(cm.exception.retry_after, 1)
        self.assertTrue(cm.exception.limits)
        rows = self.sidecar.stored_once_marked("once-user", "sentinel")
        self.assertEqual(len(rows), 1, rows)
        # Anthropic's cache reads and writes count in prompt_tokens.
        self.assertEqual((rows[0]["prompt_tokens"], rows[0]["cached_tokens"], rows[0]["provider"]),
                         (130, 100, "anthropic"))

    async def test_call_whose_body_raises_is_recorded_as_an_error(self) -> None:
        class ProviderDown(Exception):
            pass

        with self.assertRaises(ProviderDown):
            async with self.tracker.call("error-user", "gpt-4o-mini"):
                raise ProviderDown("503 from the provider")
        rows = self.sidecar.stored_once_marked("error-user", "sentinel")
        self.assertEqual([(r["status"], r.get("error_type")) for r in rows], [("error", "ProviderDown")])

    def test_synchronous_twins(self) -> None:
        tracker = LLMUsageTracker(self.sidecar.url)
        try:
            with tracker.call("sync-user", "gpt-4o-mini", estimate=10) as call:
                call.usage({"prompt_tokens": 3, "completion_tokens": 4})
            rid = tracker.log_llm_call_sync("sync-user", "gpt-4o-mini", prompt_tokens=1, completion_tokens=2,
                                            success=False, error_type="timeout")
            self.assertEqual(tracker.check_rate_limit_sync("sync-user"), self.rate_limit("sync-user"))
            rows = self.sidecar.stored_once_marked("sync-user", "sentinel")
            got = {r["request_id"]: (r["prompt_tokens"], r["completion_tokens"], r["status"]) for r in rows}
            self.assertEqual(got, {call.request_id: (3, 4, "success"), rid: (1, 2, "error")})
            stats = tracker.get_usage_stats_sync("sync-user", days=1)
            self.assertEqual(stats["total_calls"], 3)
            self.assertEqual(len(tracker.get_usage_logs_sync("sync-user", limit=2)["logs"]), 2)
            self.assertIn("calls_today", tracker.get_usage_summary_sync("sync-user"))
        finally:
            tracker.close()

    async def test_reads(self) -> None:
        await self.tracker.log_llm_call("reads-user", "gpt-4o", prompt_tokens=10, completion_tokens=5)
        rows = self.sidecar.stored_once_marked("reads-user", "sentinel")
        page = await self.tracker.get_usage_logs(user_id="reads-user", limit=1)
        self.assertEqual(len(page["logs"]), 1)
        older = await self.tracker.get_usage_logs(user_id="reads-user", limit=1, before=page["next_cursor"])
        self.assertEqual(older["logs"][0]["request_id"], rows[0]["request_id"])
        self.assertEqual((await self.tracker.get_usage_logs(user_id="reads-user", model="gpt-4o"))["logs"], rows)
        summary = await self.tracker.get_usage_summary(user_id="reads-user")
        status, direct = self.sidecar.get("/api/llm/usage/summary?user_id=reads-user")
        self.assertEqual((status, summary), (200, direct))
        self.assertEqual(summary["calls_today"], 2)

    async def test_team_id_on_records_checks_and_reads(self) -> None:
        rid = await self.tracker.log_llm_call("team-user", "gpt-4o", prompt_tokens=10, completion_tokens=5,
                                              team_id="red")
        async with self.tracker.call("team-user", "gpt-4o-mini", estimate=20, team_id="blue") as call:
            self.assertTrue(call.check["allowed"])
            call.usage({"prompt_tokens": 3, "completion_tokens": 4})
        with self.tracker.call("team-user", "gpt-4o-mini", estimate=20) as plain:
            plain.usage({"prompt_tokens": 1, "completion_tokens": 1})
        rows = self.sidecar.stored_once_marked("team-user", "sentinel")
        teams = {r["request_id"]: r["team_id"] for r in rows}
        self.assertEqual(teams, {rid: "red", call.request_id: "blue", plain.request_id: ""})
        # The reads filter by team.
        page = await self.tracker.get_usage_logs(user_id="team-user", team_id="blue")
        self.assertEqual([r["request_id"] for r in page["logs"]], [call.request_id])
        stats = await self.tracker.get_usage_stats("team-user", days=1, team_id="red")
        self.assertEqual((stats["total_calls"], stats["team_id"], list(stats["by_team"])), (1, "red", ["red"]))
        stats = self.tracker.get_usage_stats_sync("team-user", days=1)
        self.assertEqual({t: v["calls"] for t, v in stats["by_team"].items()}, {"red": 1, "blue": 1, "": 2})
        # The checks take it too (it selects the rules scoped by team).
        self.assertEqual((await self.tracker.check_rate_limit("team-user", team_id="red"))["can_call"], True)
        self.assertIn("minute", self.tracker.get_rate_limits_sync("team-user", team_id="red"))
        # An invalid team_id is refused naming it, on a record and on a check.
        with self.assertRaises(InvalidRequest) as cm:
            await self.tracker.log_llm_call("team-user", "gpt-4o", prompt_tokens=1, team_id="bad\nteam")
        self.assertIn("team_id", cm.exception.fields)
        with self.assertRaises(InvalidRequest) as cm:
            with self.tracker.call("team-user", "gpt-4o", team_id="x" * 300):
                pass
        self.assertIn("team_id", cm.exception.fields)

    async def test_a_lost_answer_is_retried_with_the_same_request_id_and_stored_once(self) -> None:
        # The first POST reaches the sidecar, but its answer is lost on the
        # way back, as when a connection drops: the client must retry, and
        # the sidecar must store the record once.
        transport = self.tracker._http()
        real = transport.request
        lost: List[str] = []

        def request(method: str, path: str, body: Any) -> Any:
            answer = real(method, path, body)
            if path == "/v1/calls" and not lost:
                lost.append(path)
                raise llmusage._Unreachable("the answer was lost")
            return answer

        transport.request = request  # type: ignore[method-assign]
        rid = await self.tracker.log_llm_call("lost-answer-user", "gpt-4o", prompt_tokens=7, completion_tokens=1)
        # Buffered: the background retry may have delivered it already.
        self.assertEqual(lost, ["/v1/calls"])
        self.assertLessEqual(self.tracker.pending, 1)
        self.assertTrue(await self.tracker.aflush(timeout=30))
        rows = self.sidecar.stored_once_marked("lost-answer-user", "sentinel")
        self.assertEqual([r["request_id"] for r in rows], [rid])

    async def test_the_event_loop_runs_while_a_request_waits(self) -> None:
        # The sidecar's answer is released by another coroutine of the same
        # loop: a client that blocked the loop would never let it run.
        release = asyncio.Event()
        seen: List[str] = []

        async def releaser() -> None:
            seen.append("ran")
            release.set()

        async def record() -> str:
            return await self.tracker.log_llm_call("loop-user", "gpt-4o", prompt_tokens=1, completion_tokens=1)

        transport = self.tracker._http()
        real = transport.request
        loop = asyncio.get_running_loop()

        def request(method: str, path: str, body: Any) -> Any:
            # In the worker thread: wait for the loop to run releaser.
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)
            return real(method, path, body)

        transport.request = request  # type: ignore[method-assign]
        rid, _ = await asyncio.gather(record(), releaser())
        self.assertEqual(seen, ["ran"])
        rows = self.sidecar.stored_once_marked("loop-user", "sentinel")
        self.assertEqual([r["request_id"] for r in rows], [rid])


class UnixSocketAndTokenTest(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        cls.token_file = os.path.join(cls.tmp.name, "token")
        with open(cls.token_file, "w") as f:
            f.write("s3cret-token\n")
        cls.sidecar = Sidecar(flags=("--auth-token-file", cls.token_file), unix=True).start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.sidecar.close()
        cls.tmp.cleanup()

    async def test_unix_socket_url_and_token_from_the_environment(self) -> None:
        self.assertTrue(self.sidecar.url.startswith("unix:/"), self.sidecar.url)
        env = {"LLMUSAGE_URL": self.sidecar.url, "LLMUSAGE_TOKEN_FILE": self.token_file}
        with unittest.mock.patch.dict(os.environ, env):
            tracker = LLMUsageTracker()  # everything from the environment
            try:
                rid = await tracker.log_llm_call("unix-user", "gpt-4o", prompt_tokens=2, completion_tokens=3)
                self.assertTrue((await tracker.check_rate_limit("unix-user"))["can_call"])
            finally:
                await tracker.aclose()
        status, page = self.sidecar.get("/api/llm/usage/logs?user_id=unix-user", token="s3cret-token")
        self.assertEqual(status, 200)
        wait_for(lambda: self.sidecar.get("/api/llm/usage/logs?user_id=unix-user", token="s3cret-token")[1]["logs"],
                 30, "the record was not stored")
        logs = self.sidecar.get("/api/llm/usage/logs?user_id=unix-user", token="s3cret-token")[1]["logs"]
        self.assertEqual([r["request_id"] for r in logs], [rid])

    async def test_a_missing_token_is_an_error_not_a_retry(self) -> None:
        with unittest.mock.patch.dict(os.environ, {"LLMUSAGE_TOKEN": ""}):
            tracker = LLMUsageTracker(self.sidecar.url)
            try:
                with self.assertRaises(LLMUsageError) as cm:
                    await tracker.log_llm_call("unix-user", "gpt-4o")
                self.assertEqual(cm.exception.status, 401)
                self.assertEqual(tracker.pending, 0)
            finally:
                await tracker.aclose()


class UnreachableTest(unittest.IsolatedAsyncioTestCase):
    async def test_a_full_buffer_and_close_report_every_record(self) -> None:
        reported: List[Any] = []
        tracker = LLMUsageTracker("http://127.0.0.1:%d" % free_port(), buffer_size=2,
                                  on_lost=lambda records, reason: reported.append((len(records), reason)))
        with self.assertLogs("llmusage", "ERROR") as logs:
            for _ in range(3):
                await tracker.log_llm_call("down-user", "gpt-4o", prompt_tokens=1)
            self.assertEqual(tracker.pending, 2)
            self.assertEqual(reported[0][0], 1)
            self.assertIn("full", reported[0][1])
            await tracker.aclose(timeout=0)
        self.assertEqual([n for n, _ in reported], [1, 2])
        self.assertIn("closed", reported[1][1])
        self.assertEqual((tracker.lost, tracker.pending), (3, 0))
        self.assertIn("3 lost in all", logs.output[-1])

    async def test_an_unreachable_sidecar_does_not_stop_the_call(self) -> None:
        # The project's rule: a backend's outage never takes the application
        # out of service. An unreachable sidecar lets call() and the seed's
        # check_rate_limit pass (with a warning), and the record is buffered.
        tracker = LLMUsageTracker("http://127.0.0.1:%d" % free_port())
        try:
            with self.assertLogs("llmusage", "WARNING") as logs:
                answer = await tracker.check_rate_limit("down-user", "hour")
                ran = False
                async with tracker.call("down-user", "gpt-4o", estimate=10) as call:
                    ran = True
                    call.usage({"prompt_tokens": 3, "completion_tokens": 4})
                with tracker.call("down-user", "gpt-4o") as call2:
                    pass
            self.assertEqual(answer, {"can_call": True, "limit_type": "hour", "limit": None, "used": None,
                                      "remaining": None, "reset_at": None})
            self.assertTrue(ran)
            self.assertEqual((call.checked, call.check, call2.checked), (False, {}, False))
            self.assertIn("unreachable", logs.output[0])
            self.assertEqual(tracker.pending, 2)  # both records wait for the sidecar
            # The other reads have no answer to make up.
            with self.assertRaises(llmusage.SidecarUnavailable):
                await tracker.get_usage_stats("down-user")
        finally:
            await tracker.aclose(timeout=0)

    async def test_fail_open_false_raises_when_unreachable(self) -> None:
        tracker = LLMUsageTracker("http://127.0.0.1:%d" % free_port(), fail_open=False)
        try:
            with self.assertRaises(llmusage.SidecarUnavailable):
                await tracker.check_rate_limit("down-user")
            with self.assertRaises(ConnectionError):
                async with tracker.call("down-user", "gpt-4o"):
                    self.fail("the body ran without a check")
        finally:
            await tracker.aclose(timeout=0)

if __name__ == "__main__":
    unittest.main()
