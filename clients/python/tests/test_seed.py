"""The seed's usage examples, as written, against a real sidecar, with the
package installed as a new user would (pip install ./clients/python)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
import urllib.parse

from sidecar import PACKAGE_DIR, REPO, Sidecar, wait_for

# The seed's examples, verbatim (test_examples_are_the_seeds holds them to
# the seed's text). They become the bodies of async functions below.
SEED_GROQ = '''\
from app.services.llm_usage_tracker import llm_usage_tracker

response = groq_client.chat.completions.create(...)

await llm_usage_tracker.log_llm_call(
    user_id=user_id,
    model="llama-3.1-70b-versatile",
    tokens_used=response.usage.total_tokens,
    prompt_tokens=response.usage.prompt_tokens,
    completion_tokens=response.usage.completion_tokens,
    metadata={"provider": "groq"}
)
'''

SEED_OPENAI = '''\
response = openai_client.chat.completions.create(...)

await llm_usage_tracker.log_llm_call(
    user_id=user_id,
    model="gpt-4",
    tokens_used=response.usage.total_tokens,
    prompt_tokens=response.usage.prompt_tokens,
    completion_tokens=response.usage.completion_tokens,
    metadata={"provider": "openai"}
)
'''

SEED_ANTHROPIC = '''\
response = anthropic_client.messages.create(...)

await llm_usage_tracker.log_llm_call(
    user_id=user_id,
    model="claude-3-opus",
    tokens_used=response.usage.input_tokens + response.usage.output_tokens,
    prompt_tokens=response.usage.input_tokens,
    completion_tokens=response.usage.output_tokens,
    metadata={"provider": "anthropic"}
)
'''

SEED_MULTI = '''\
# Track Groq call
await llm_usage_tracker.log_llm_call(
    user_id=user_id,
    model="llama-3.1-70b-versatile",
    metadata={"provider": "groq"}
)

# Track OpenAI call
await llm_usage_tracker.log_llm_call(
    user_id=user_id,
    model="gpt-4",
    metadata={"provider": "openai"}
)
'''

SEED_CHECK = '''\
# Same code works regardless of provider
limit_info = await llm_usage_tracker.check_rate_limit(
    user_id=user_id,
    limit_type="minute"
)

if not limit_info["can_call"]:
    raise HTTPException(429, "Rate limit exceeded")
'''

SEED_STATS = '''\
# Returns stats across all LLM providers
stats = await llm_usage_tracker.get_usage_stats(
    user_id=user_id,
    days=30
)

# Shows breakdown by model (works for any provider)
print(stats["by_model"])
'''

# The application around the examples: the team's one-line
# app/services/llm_usage_tracker.py, and stand-in provider clients that
# answer with the providers' usage shapes (the SDKs' objects are read by
# attribute, as these are).
SCRIPT = '''\
import asyncio, contextlib, io, json, sys, time
from types import SimpleNamespace as NS

import llmusage
from app.services.llm_usage_tracker import llm_usage_tracker


class HTTPException(Exception):
    def __init__(self, status_code, detail):
        super().__init__(status_code, detail)
        self.status_code = status_code


class Create:
    def __init__(self, usage):
        self.usage = usage

    def create(self, *args, **kwargs):
        return NS(id="resp-1", usage=self.usage)


# groq: total_tokens and the timing fields Groq adds.
groq_client = NS(chat=NS(completions=Create(NS(
    prompt_tokens=1000, completion_tokens=250, total_tokens=1250,
    queue_time=0.01, prompt_time=0.05, completion_time=0.3, total_time=0.36))))
# openai: chat.completions usage with its details objects.
openai_client = NS(chat=NS(completions=Create(NS(
    prompt_tokens=200, completion_tokens=100, total_tokens=300,
    prompt_tokens_details=NS(cached_tokens=0, audio_tokens=0),
    completion_tokens_details=NS(reasoning_tokens=0, audio_tokens=0)))))
# anthropic: messages usage, without cache use.
anthropic_client = NS(messages=Create(NS(
    input_tokens=700, output_tokens=300, cache_creation_input_tokens=0,
    cache_read_input_tokens=0, service_tier="standard")))

%(functions)s


async def main():
    user_id = sys.argv[1]
    limited = sys.argv[2]
    await groq_example(user_id)
    await openai_example(user_id)
    await anthropic_example(user_id)
    await multi_provider_example(user_id)

    # The rate-limit check, before each call as in a route, until it refuses.
    refused_at = None
    for i in range(10):
        try:
            await check_example(limited)
        except HTTPException as err:
            assert err.status_code == 429
            refused_at = i
            break
        await groq_example(limited)

    # The stats example, once the five records are stored.
    deadline = time.monotonic() + 30
    while True:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            stats = await stats_example(user_id)
        if stats["total_calls"] == 5 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    print(json.dumps({"module": llmusage.__file__, "refused_at": refused_at, "stats": stats,
                      "printed": out.getvalue()}))


asyncio.run(main())
'''


def _function(name: str, body: str, returns: str = "") -> str:
    return "async def %s(user_id):\n%s%s" % (name, textwrap.indent(body, "    "),
                                             "    return %s\n" % returns if returns else "")


class SeedExamplesTest(unittest.TestCase):
    """pip install ./clients/python into a directory of its own, then the
    seed's examples, unchanged, in a fresh interpreter."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.sidecar = Sidecar(limits="limits:\n  - user_id: seed-limited\n    limit_type: minute\n    requests: 2\n")
        cls.sidecar.start()
        cls.tmp = tempfile.TemporaryDirectory()
        cls.site = os.path.join(cls.tmp.name, "site")
        cls.pip = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
             "--disable-pip-version-check", "--target", cls.site, PACKAGE_DIR],
            capture_output=True, text=True)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.sidecar.close()
        cls.tmp.cleanup()

    def test_seed_examples_run_unchanged(self) -> None:
        self.assertEqual(self.pip.returncode, 0, self.pip.stdout + self.pip.stderr)
        app = os.path.join(self.tmp.name, "app")
        os.makedirs(os.path.join(app, "app", "services"))
        for pkg in ("app", os.path.join("app", "services")):
            open(os.path.join(app, pkg, "__init__.py"), "w").close()
        with open(os.path.join(app, "app", "services", "llm_usage_tracker.py"), "w") as f:
            f.write("from llmusage import LLMUsageTracker, llm_usage_tracker  # noqa: F401\n")
        functions = "\n\n".join([
            _function("groq_example", SEED_GROQ), _function("openai_example", SEED_OPENAI),
            _function("anthropic_example", SEED_ANTHROPIC), _function("multi_provider_example", SEED_MULTI),
            _function("check_example", SEED_CHECK), _function("stats_example", SEED_STATS, "stats"),
        ])
        script = os.path.join(app, "main.py")
        with open(script, "w") as f:
            f.write(SCRIPT % {"functions": functions})
        env = dict(os.environ, LLMUSAGE_URL=self.sidecar.url, PYTHONPATH=os.pathsep.join([self.site, app]))
        run = subprocess.run([sys.executable, script, "seed-user", "seed-limited"], capture_output=True, text=True,
                             env=env, cwd=self.tmp.name, timeout=120)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        out = json.loads(run.stdout.strip().splitlines()[-1])

        # Imported from the installed copy, not from the source tree.
        self.assertTrue(out["module"].startswith(self.site), out["module"])
        # Two calls pass the 2-a-minute limit; the third check refuses.
        self.assertEqual(out["refused_at"], 2)
        status, answer = self.sidecar.get("/api/llm/usage/rate-limit/minute?user_id=seed-limited")
        self.assertEqual((status, answer["can_call"], answer["used"]), (200, False, 2), answer)

        want = {
            "llama-3.1-70b-versatile": {"provider": "groq", "calls": 2, "tokens": 1250, "prompt_tokens": 1000,
                                        "completion_tokens": 250},
            "gpt-4": {"provider": "openai", "calls": 2, "tokens": 300, "prompt_tokens": 200, "completion_tokens": 100},
            "claude-3-opus": {"provider": "anthropic", "calls": 1, "tokens": 1000, "prompt_tokens": 700,
                              "completion_tokens": 300},
        }
        stats = out["stats"]
        got = {m: {k: v[k] for k in ("provider", "calls", "tokens", "prompt_tokens", "completion_tokens")}
               for m, v in stats["by_model"].items()}
        self.assertEqual(got, want)
        self.assertEqual((stats["total_calls"], stats["total_tokens"]), (5, 2550))
        self.assertIn("claude-3-opus", out["printed"])
        # The client's answer is the API's.
        status, direct = self.sidecar.get("/api/llm/usage/stats?" + urllib.parse.urlencode(
            {"user_id": "seed-user", "days": 30}))
        self.assertEqual(status, 200)
        self.assertEqual(direct["by_model"], stats["by_model"])

    def test_examples_are_the_seeds(self) -> None:
        # testdata/seed.txt is a copy of the seed document (the project's
        # ../shared/seed/), so that the examples are held to it wherever
        # the tests run; where the original is at hand, the copy is held to it.
        with open(os.path.join(os.path.dirname(__file__), "testdata", "seed.txt"), encoding="utf-8") as f:
            text = f.read()
        for name, example in (("Groq", SEED_GROQ), ("OpenAI", SEED_OPENAI), ("Anthropic", SEED_ANTHROPIC),
                              ("multi-provider", SEED_MULTI), ("rate limit", SEED_CHECK), ("stats", SEED_STATS)):
            with self.subTest(name):
                self.assertIn(example, text, "the %s example is not the seed's" % name)
        seed_dir = os.environ.get("LLMUSAGE_SEED_DIR") or os.path.join(REPO, "..", "shared", "seed")
        for path in glob.glob(os.path.join(seed_dir, "*.txt")):
            with open(path, encoding="utf-8") as f:
                self.assertEqual(f.read(), text, "testdata/seed.txt is not a copy of %s" % path)


class InstallTest(unittest.TestCase):
    """The other ways in: plain pip (no index needed: the build backend
    needs nothing), and copying the one file."""

    def test_pip_install_without_index(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            run = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                                  "--disable-pip-version-check", "--target", tmp, PACKAGE_DIR],
                                 capture_output=True, text=True)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            files = sorted(f for f in os.listdir(os.path.join(tmp, "llmusage")) if f != "__pycache__")
            self.assertEqual(files, ["__init__.py", "py.typed"])
            self._imports_from(tmp, os.path.join(tmp, "llmusage", "__init__.py"))

    def test_copy_one_file(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(PACKAGE_DIR, "llmusage", "__init__.py")) as src, \
                    open(os.path.join(tmp, "llmusage.py"), "w") as dst:
                dst.write(src.read())
            self._imports_from(tmp, os.path.join(tmp, "llmusage.py"))

    def _imports_from(self, path: str, want: str) -> None:
        code = "import llmusage, sys; print(llmusage.__file__); llmusage.llm_usage_tracker.close()"
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=path), cwd=tempfile.gettempdir())
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(os.path.realpath(run.stdout.strip()), os.path.realpath(want))
        self.assertEqual(run.stderr, "")


if __name__ == "__main__":
    unittest.main()
