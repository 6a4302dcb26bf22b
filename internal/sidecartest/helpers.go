package sidecartest

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"
)

// RequireTool returns the path of the program name (promtool, prometheus,
// redis-server...) on PATH. Without it the test is skipped, or fails under
// LLMUSAGE_TEST_REQUIRE_POSTGRES=1, which make test sets after installing
// what the tests need (scripts/test-env.sh): there a missing tool must not
// pass unnoticed.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("LLMUSAGE_TEST_REQUIRE_POSTGRES") == "1" {
		t.Fatalf("%s is required (LLMUSAGE_TEST_REQUIRE_POSTGRES=1) but not installed: %s (make test installs it: scripts/test-deps.sh)", name, err)
	}
	t.Skipf("%s is not installed: %s (make test installs it; LLMUSAGE_TEST_REQUIRE_POSTGRES=1 fails instead of skipping)", name, err)
	return ""
}

// WaitFor polls cond, every 10 ms at first and every 250 ms at most, until
// it holds, and fails t with the message after timeout. Call it from the
// test's goroutine.
func WaitFor(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	if !Eventually(timeout, cond) {
		t.Fatalf(format+" (waited %s)", append(args, timeout)...)
	}
}

// Eventually polls cond as WaitFor does and tells whether it held within
// timeout, for a caller whose message needs what cond saw last.
func Eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	pause := 10 * time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(2*pause, 250*time.Millisecond)
	}
	return true
}

// DecodeJSON reads and closes resp's body, which must be a JSON object,
// and returns the status code, the header and the object; t fails if the
// body is not JSON.
func DecodeJSON(t testing.TB, resp *http.Response) (int, http.Header, map[string]any) {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: reading the answer: %s", resp.Request.URL, err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: answer %d is not JSON: %s: %s", resp.Request.URL, resp.StatusCode, err, b)
	}
	return resp.StatusCode, resp.Header, out
}

// FreeAddr returns a 127.0.0.1 address whose port was free a moment ago.
// Another process may take it before it is used: prefer port 0 wherever
// the program reports the port it bound. It is for flags that need an
// address the program never serves on, and for programs that cannot
// report their port (Prometheus).
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
