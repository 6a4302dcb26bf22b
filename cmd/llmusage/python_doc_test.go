package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPythonSnippet runs the Python client of docs/kubernetes.md against
// the sidecar, so that the document's replacement of the seed's calls
// keeps working.
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
	p := startSidecar(t, "limits:\n  - user_id: doc-user\n    limit_type: minute\n    requests: 2\n")
	script := snippet + `
allowed, request_id, answer = check_rate_limit("doc-user", "llama-3.1-70b-versatile", "groq")
assert allowed and request_id, answer
log_llm_call("doc-user", "llama-3.1-70b-versatile", request_id,
             {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
             provider="groq", latency_ms=420.5, metadata={"route": "/chat"})
# Anthropic's usage names, no earlier check.
log_llm_call("doc-user", "claude-3-opus", None, {"input_tokens": 7, "output_tokens": 3})
allowed, _, answer = check_rate_limit("doc-user", "gpt-4o")
assert not allowed and answer["retry_after_seconds"] >= 1, answer
try:
    log_llm_call("doc-user", "gpt-4o", None, {"prompt_tokens": -1})
    raise SystemExit("a negative count was accepted")
except ValueError as err:
    assert "prompt_tokens" in str(err), err
print("ok")
`
	path := filepath.Join(t.TempDir(), "client.py")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, path)
	cmd.Env = append(os.Environ(), "LLMUSAGE_URL="+p.APIURL())
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("the snippet failed: %v\n%s", err, out)
	}
	metrics := p.Scrape(t)
	for _, want := range []string{
		`llm_tokens_total{model="llama-3.1-70b-versatile",provider="groq",token_type="prompt",user="doc-user"} 100`,
		`llm_tokens_total{model="claude-3-opus",provider="anthropic",token_type="completion",user="doc-user"} 3`,
		`llm_rate_limit_checks_total{decision="limited",user="doc-user"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("/metrics lacks %s", want)
		}
	}
}
