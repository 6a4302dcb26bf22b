// Package sidecartest starts llmusage sidecars for end-to-end tests: it
// builds the binary once per test binary, starts `llmusage serve` on
// ports the kernel picks, reads the bound addresses from its log, waits
// until it is ready, and kills it (printing its log if the test failed)
// when the test ends.
//
// A test package that uses it calls Main from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(sidecartest.Main(m)) }
//
// Main runs the tests through pgtest.Main, so it also stops pgtest's
// throwaway Postgres server, then removes the binary.
//
// The harness relies on one contract of the binary only: serve logs one
// line with the message "llmusage serving" and attributes api and metrics
// holding the bound addresses (a socket path for a unix: API address).
package sidecartest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/llmusage/llmusage/internal/pgtest"
)

var build struct {
	// main is set by Main: without it the binary would be left behind.
	main bool
	once sync.Once
	dir  string
	path string
	err  error
}

// Main runs the tests (through pgtest.Main, which stops a throwaway
// Postgres server if one was started) and removes the binary built for
// them. TestMain passes its result to os.Exit.
func Main(m *testing.M) int {
	build.main = true
	code := pgtest.Main(m)
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
	return code
}

// Race tells whether the binary is built with the race detector: it is
// when the test binary is (go test -race), as make test runs every test.
const Race = raceEnabled

// Binary returns the path of the llmusage binary, building it on the
// first call: ./cmd/llmusage of the module the test runs in, with -race
// when the test binary has it.
func Binary(t testing.TB) string {
	t.Helper()
	if !build.main {
		t.Fatal("sidecartest: call sidecartest.Main from TestMain, so that the binary is built once and removed")
	}
	build.once.Do(func() { build.path, build.err = buildBinary() })
	if build.err != nil {
		t.Fatalf("cannot build llmusage: %s", build.err)
	}
	return build.path
}

func buildBinary() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("go env GOMOD: the test does not run inside a module")
	}
	dir, err := os.MkdirTemp("", "llmusage-sidecartest")
	if err != nil {
		return "", err
	}
	build.dir = dir
	path := filepath.Join(dir, "llmusage")
	args := []string{"build", "-o", path}
	if Race {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "./cmd/llmusage")...)
	cmd.Dir = filepath.Dir(gomod)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go %s: %s\n%s", strings.Join(args, " "), err, output.Bytes())
	}
	return path, nil
}

// Command returns the command running the binary with args in a new
// temporary directory of t's: for the subcommands other than a served
// sidecar (migrate, version, loadgen), and for serve when the test wants
// its exit, not a running sidecar.
func Command(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(Binary(t), args...)
	cmd.Dir = t.TempDir()
	return cmd
}

// Run runs the binary with args (see Command) and returns its combined
// output and exit error.
func Run(t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := Command(t, args...).CombinedOutput()
	return string(out), err
}
