package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/llmusage/llmusage/internal/doctest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

// TestDocExamples runs the examples of README.md and docs/*.md as a
// reader would, against the binary started as the page says, and
// compares what each prints with the output block shown under it (the
// convention is in docs/layout.md, "Examples are tested"). Every shell or
// Python block runs unless marked `<!-- not run: reason -->` (or its page
// `<!-- not run, whole page: reason -->`), so that an example cannot
// drift unseen; the marked ones are counted and listed in the log.
func TestDocExamples(t *testing.T) {
	python := sidecartest.RequireTool(t, "python3")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	pages = append([]string{filepath.Join(root, "README.md")}, pages...)
	var ran, exempt int
	for _, path := range pages {
		name, _ := filepath.Rel(root, path)
		if notExamples[name] {
			continue
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		page, err := doctest.Parse(string(raw))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			r := &docRunner{root: root, name: name, python: python}
			for _, b := range page.Blocks {
				if !doctest.Runnable(b.Lang) && !strings.HasPrefix(b.Directive, "doctest:") {
					continue
				}
				if reason, ok := b.NotRun(); ok || page.NotRun != "" {
					if !ok {
						reason = "whole page: " + page.NotRun
					}
					if reason == "" {
						t.Errorf("%s:%d: a block not run must say why (<!-- not run: reason -->)", name, b.Line)
					}
					if doctest.Runnable(b.Lang) {
						exempt++
						t.Logf("%s:%d: not run: %s", name, b.Line, reason)
					}
					continue
				}
				r.run(t, b)
				if doctest.Runnable(b.Lang) {
					ran++
				}
			}
		})
	}
	t.Logf("%d examples run, %d not run", ran, exempt)
	// A floor, so that a parser that finds nothing cannot pass: the
	// README's tour alone has seven.
	if ran < 15 {
		t.Fatalf("only %d examples ran", ran)
	}
}

// notExamples are the pages whose blocks are not examples of the
// sidecar's API: benchmark commands (docs/benchmarks.md records what
// they measured on one machine), and the generated references.
var notExamples = map[string]bool{
	"docs/benchmarks.md": true,
	"docs/flags.md":      true,
	"docs/api.md":        true,
}

// docRunner runs one page's blocks in order against one sidecar at a
// time, and one Python interpreter whose globals the page's Python
// blocks share, as one reader's session would.
type docRunner struct {
	// root is the repository, the commands' working directory.
	root string
	// name is the page's path in the repository, for messages.
	name string
	// python is the python3 binary.
	python string
	// sidecar is the one the page's commands talk to; nil until one is needed.
	sidecar *sidecartest.Sidecar
	// py is the page's interpreter, with its pipes; nil until a Python block.
	py *pythonSession
}

// run runs b (or starts the sidecar its directive says) and compares its
// output with the one shown.
func (r *docRunner) run(t *testing.T, b *doctest.Block) {
	t.Helper()
	where := fmt.Sprintf("%s:%d", r.name, b.Line)
	switch d := b.Directive; {
	case d == "doctest: limits":
		// The page's limits file: serve --limits-file limits.yaml in a
		// directory of its own, as the page's reader would.
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "limits.yaml"), []byte(b.Text), 0o644); err != nil {
			t.Fatal(err)
		}
		r.start(t, sidecartest.Options{Dir: dir, Flags: []string{"--limits-file", "limits.yaml"}})
		return
	case d == "doctest: make run":
		// A fresh sidecar of make run, for the block under the directive.
		r.start(t, r.makeRun(t))
	case strings.HasPrefix(d, "doctest:"):
		t.Fatalf("%s: unknown directive %q (doctest: limits, doctest: make run)", where, d)
	}
	if r.sidecar == nil {
		r.start(t, r.makeRun(t))
	}
	var got string
	switch b.Lang {
	case "python":
		got = r.pythonBlock(t, where, b.Text)
	default:
		got = r.shell(t, where, b.Text)
	}
	if b.Output == nil {
		return
	}
	if !doctest.Match(b.Output.Text, got, b.Output.Lang == "json") {
		t.Errorf("%s shows (line %d):\n%s\nthe example prints:\n%s", where, b.Output.Line, strings.TrimSpace(b.Output.Text), strings.TrimSpace(got))
	}
}

// makeRun is how `make run` starts the sidecar: in the repository, with
// deploy/kubernetes/limits.yaml (its data elsewhere, so that the test
// leaves the work tree as it was).
func (r *docRunner) makeRun(t *testing.T) sidecartest.Options {
	return sidecartest.Options{Dir: r.root, DataDir: t.TempDir(), Flags: []string{"--limits-file", "deploy/kubernetes/limits.yaml"}}
}

// start stops the page's sidecar, if any, and starts another.
func (r *docRunner) start(t *testing.T, opts sidecartest.Options) {
	if r.sidecar != nil {
		_ = r.sidecar.Stop(t, syscall.SIGTERM)
	}
	if r.py != nil {
		r.py.close()
		r.py = nil
	}
	r.sidecar = sidecartest.Start(t, opts)
}

// shell runs a shell block with bash, its documented addresses rewritten
// to the test sidecar's, and returns its standard output.
func (r *docRunner) shell(t *testing.T, where, script string) string {
	t.Helper()
	api := r.sidecar.APIAddr()
	metrics := r.sidecar.MetricsAddr()
	script = strings.NewReplacer(
		"localhost:9470", api, "127.0.0.1:9470", api,
		"localhost:9471", metrics, "127.0.0.1:9471", metrics,
	).Replace(script)
	cmd := exec.Command("bash", "-e", "-o", "pipefail", "-c", script)
	cmd.Dir = r.root
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: the example fails: %v\n%s\n%s\nstderr: %s", where, err, script, out, stderr.String())
	}
	return string(out)
}

// pythonBlock runs a Python block in the page's interpreter (top-level
// await allowed, as in the seed's examples) and returns what it printed.
func (r *docRunner) pythonBlock(t *testing.T, where, code string) string {
	t.Helper()
	if r.py == nil {
		r.py = startPython(t, r.python, filepath.Join(r.root, "clients", "python"), r.sidecar.APIURL())
	}
	out, err := r.py.exec(code)
	if err != nil {
		t.Fatalf("%s: the example fails: %v\n%s", where, err, out)
	}
	return out
}

// pythonSession is a python3 process that runs blocks sent on its stdin.
type pythonSession struct {
	// cmd is the process.
	cmd *exec.Cmd
	// in takes one JSON string, a block's code, per line.
	in io.WriteCloser
	// out reads what the blocks print, each followed by a marker line.
	out *bufio.Reader
	// stderr holds the tracebacks.
	stderr *lockedBuffer
}

// lockedBuffer is a strings.Builder that the process's stderr copier and
// the test may use at once.
type lockedBuffer struct {
	// mu guards b.
	mu sync.Mutex
	// b is what was written.
	b strings.Builder
}

// Write appends p.
func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is what was written so far.
func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// pythonDriver runs each block with top-level await on one event loop,
// then prints the marker (with "error" when the block raised).
const pythonDriver = `
import ast, asyncio, inspect, json, sys, traceback
loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
g = {"__name__": "__main__"}
for line in sys.stdin:
    status = "ok"
    try:
        code = compile(json.loads(line), "<doc>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, g)
        if inspect.iscoroutine(result):
            loop.run_until_complete(result)
    except BaseException:
        traceback.print_exc()
        status = "error"
    sys.stdout.flush()
    sys.stderr.flush()
    print("\x00doctest " + status, flush=True)
`

// startPython starts the page's interpreter, with the client of
// clients/python importable and pointed at the sidecar.
func startPython(t *testing.T, python, pkg, url string) *pythonSession {
	t.Helper()
	cmd := exec.Command(python, "-u", "-c", pythonDriver)
	cmd.Env = append(os.Environ(), "LLMUSAGE_URL="+url, "PYTHONPATH="+pkg, "PYTHONDONTWRITEBYTECODE=1")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &pythonSession{cmd: cmd, in: in, out: bufio.NewReader(out), stderr: &lockedBuffer{}}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
}

// exec runs one block and returns what it printed.
func (s *pythonSession) exec(code string) (string, error) {
	line, err := json.Marshal(code)
	if err != nil {
		return "", err
	}
	if _, err := fmt.Fprintf(s.in, "%s\n", line); err != nil {
		return "", fmt.Errorf("cannot send the block to python3: %v (stderr: %s)", err, s.stderr.String())
	}
	var printed strings.Builder
	for {
		l, err := s.out.ReadString('\n')
		if err != nil {
			return printed.String(), fmt.Errorf("python3 ended: %v (stderr: %s)", err, s.stderr.String())
		}
		if status, ok := strings.CutPrefix(l, "\x00doctest "); ok {
			if strings.TrimSpace(status) != "ok" {
				return printed.String(), fmt.Errorf("it raised:\n%s", s.stderr.String())
			}
			return printed.String(), nil
		}
		printed.WriteString(l)
	}
}

// close ends the interpreter: its stdin closed, it exits by itself.
func (s *pythonSession) close() {
	if s.in == nil {
		return
	}
	_ = s.in.Close()
	_ = s.cmd.Wait()
	s.in = nil
}
