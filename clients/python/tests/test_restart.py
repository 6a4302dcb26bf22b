"""A record logged while the sidecar is down is delivered once it is back,
and stored exactly once."""

from __future__ import annotations

import unittest

from llmusage import LLMUsageTracker
from sidecar import Sidecar


class RestartTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.sidecar = Sidecar().start()
        self.tracker = LLMUsageTracker(self.sidecar.url)

    async def asyncTearDown(self) -> None:
        await self.tracker.aclose(timeout=0)
        self.sidecar.close()

    async def test_records_logged_while_down_are_stored_once_after_a_restart(self) -> None:
        before = await self.tracker.log_llm_call("restart-user", "gpt-4o", prompt_tokens=1, completion_tokens=1)
        self.sidecar.stop()
        with self.assertLogs("llmusage", "WARNING"):
            down = [await self.tracker.log_llm_call("restart-user", "gpt-4o", prompt_tokens=10 + i,
                                                    completion_tokens=1) for i in range(3)]
        self.assertEqual(self.tracker.pending, 3)
        self.assertFalse(await self.tracker.aflush(timeout=0.5))  # nothing to deliver to
        self.sidecar.start()
        self.assertTrue(await self.tracker.aflush(timeout=30))
        self.assertEqual((self.tracker.pending, self.tracker.lost), (0, 0))
        after = await self.tracker.log_llm_call("restart-user", "gpt-4o", prompt_tokens=99, completion_tokens=1)
        rows = self.sidecar.stored_once_marked("restart-user", "sentinel")
        self.assertEqual(sorted(r["request_id"] for r in rows), sorted([before, after] + down))
        self.assertEqual(sorted(r["prompt_tokens"] for r in rows), [1, 10, 11, 12, 99])


if __name__ == "__main__":
    unittest.main()
