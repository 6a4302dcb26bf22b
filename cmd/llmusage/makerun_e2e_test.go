package main

import (
	"net"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMakeRun is a new user's `make run`, in a terminal: it builds, says
// so, serves with the flags of ARGS; a hangup or kill -HUP sent to the
// terminal's process group reaches the sidecar, which reloads the limits
// file; Ctrl-C (SIGINT to the group) stops it, and nothing keeps serving.
func TestMakeRun(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is not installed: apt-get install make")
	}
	dataDir := t.TempDir()
	cmd := exec.Command("make", "--no-print-directory", "-C", "../..", "run",
		"ARGS=--listen-address 127.0.0.1:0 --metrics-address 127.0.0.1:0 --log-format json --data-dir "+dataDir)
	// A group of its own, as a terminal's foreground job has.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("make run's output:\n%s", out.String())
		}
	}()

	// The first build of a fresh machine takes minutes.
	waitFor(t, &out, exited, 10*time.Minute, `"msg":"llmusage serving"`)
	if !strings.Contains(out.String(), "building llmusage") {
		t.Errorf("make run did not say it builds")
	}
	api := regexp.MustCompile(`"msg":"llmusage serving".*"api":"([^"]+)"`).FindStringSubmatch(out.String())
	if api == nil {
		t.Fatalf("no API address in the serving line")
	}
	conn, err := net.DialTimeout("tcp", api[1], 10*time.Second)
	if err != nil {
		t.Fatalf("the sidecar does not answer on %s: %v", api[1], err)
	}
	conn.Close()

	if err := syscall.Kill(-pgid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, &out, exited, time.Minute, `"msg":"limits file reloaded"`)
	if !regexp.MustCompile(`"msg":"limits file reloaded".*"trigger":"SIGHUP"`).MatchString(out.String()) {
		t.Errorf("the reload was not SIGHUP's")
	}

	if err := syscall.Kill(-pgid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(time.Minute):
		t.Fatal("make run still runs a minute after SIGINT")
	}
	// Nothing of the group is left, and the port is free.
	deadline := time.Now().Add(time.Minute)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatal("a process of make run's group outlived it")
		}
		time.Sleep(50 * time.Millisecond)
	}
	ln, err := net.Listen("tcp", api[1])
	if err != nil {
		t.Fatalf("%s is still taken after make run ended: %v", api[1], err)
	}
	ln.Close()
	if !strings.Contains(out.String(), `"msg":"shutting down"`) {
		t.Errorf("the sidecar did not drain on SIGINT")
	}
}

// waitFor waits until out holds want, failing if the process exits first
// or the deadline passes.
func waitFor(t *testing.T, out *lockedBuffer, exited <-chan error, within time.Duration, want string) {
	t.Helper()
	deadline := time.After(within)
	for !strings.Contains(out.String(), want) {
		select {
		case err := <-exited:
			t.Fatalf("make run exited (%v) before %s", err, want)
		case <-deadline:
			t.Fatalf("no %s within %s", want, within)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
