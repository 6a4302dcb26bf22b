package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPythonSnippet runs the Python block of docs/kubernetes.md (the
// one-line llm_usage_tracker.py and a route using call()) against the
// sidecar, with the package of clients/python, so that the document's
// replacement of the seed's service keeps working.
func TestPythonSnippet(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed to run the snippet of docs/kubernetes.md")
	}
	doc, err := os.ReadFile("../../docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```python\n")
	snippet, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("no python block in docs/kubernetes.md")
	}
	pkg, err := filepath.Abs("../../clients/python")
	if err != nil {
		t.Fatal(err)
	}
	p := startSidecar(t, "limits:\n  - user_id: doc-user\n    limit_type: minute\n    requests: 2\n")
	// Stand-ins for the app's Groq client and FastAPI's HTTPException.
	script := snippet + `
import asyncio
from types import SimpleNamespace as NS


class HTTPException(Exception):
    def __init__(self, status_code, detail, headers=None):
        super().__init__(status_code, detail)
        self.status_code, self.headers = status_code, headers


class Completions:
    async def create(self, model, messages):
        usage = NS(prompt_tokens=100, completion_tokens=50, total_tokens=150, prompt_tokens_details=None)
        return NS(usage=usage, choices=[NS(message=NS(content="hello"))])


groq_client = NS(chat=NS(completions=Completions()))


async def main():
    assert await chat("doc-user", [{"role": "user", "content": "hi"}]) == "hello"
    # The seed's call, unchanged, through the same module.
    await llm_usage_tracker.log_llm_call(user_id="doc-user", model="claude-3-opus", tokens_used=10,
                                         prompt_tokens=7, completion_tokens=3, metadata={"provider": "anthropic"})
    try:
        await chat("doc-user", [])
        raise SystemExit("a call over the limit was allowed")
    except HTTPException as err:
        assert err.status_code == 429 and int(err.headers["Retry-After"]) >= 1, err.headers
    limit = await llm_usage_tracker.check_rate_limit(user_id="doc-user", limit_type="minute")
    assert not limit["can_call"], limit
    await llm_usage_tracker.aclose()
    print("ok")


asyncio.run(main())
`
	path := filepath.Join(t.TempDir(), "client.py")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, path)
	cmd.Env = append(os.Environ(), "LLMUSAGE_URL="+p.APIURL(), "PYTHONPATH="+pkg, "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("the snippet failed: %v\n%s", err, out)
	}
	metrics := p.Scrape(t)
	for _, want := range []string{
		`llm_tokens_total{model="llama-3.1-70b-versatile",provider="groq",team="",token_type="prompt",user="doc-user"} 100`,
		`llm_tokens_total{model="claude-3-opus",provider="anthropic",team="",token_type="completion",user="doc-user"} 3`,
		`llm_rate_limit_checks_total{decision="limited",user="doc-user"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("/metrics lacks %s", want)
		}
	}
}
