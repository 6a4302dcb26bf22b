package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmusage/llmusage/internal/sidecartest"
)

// TestPythonClient runs the tests of the Python package (clients/python)
// against the binary built for these tests: the seed's examples installed
// with pip, checks, call(), the retry buffer across a restart, the unix
// socket and the token. The Python harness starts and restarts the
// sidecars itself (clients/python/tests/sidecar.py), since a restart must
// happen while the client runs. A missing python3 fails: the package is
// documented, so it must be tested.
func TestPythonClient(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 (3.9 or later) is needed to test clients/python")
	}
	dir, err := filepath.Abs("../../clients/python")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, "-m", "unittest", "discover", "-s", "tests", "-v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LLMUSAGE_TEST_BINARY="+sidecartest.Binary(t), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python3 -m unittest discover (in clients/python): %v\n%s", err, out)
	}
	// unittest exits 0 when tests were skipped; none may be.
	if strings.Contains(string(out), "skipped=") {
		t.Fatalf("Python tests were skipped:\n%s", out)
	}
	t.Logf("%s", out)
}
