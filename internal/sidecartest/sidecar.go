package sidecartest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Options says how to start a sidecar. The zero value starts
// `llmusage serve --listen-address 127.0.0.1:0 --metrics-address 127.0.0.1:0
// --log-format json --data-dir <Dir>/data` with the embedded SQLite
// database and the seeded default rules, and waits until /readyz answers 200.
type Options struct {
	// Limits is the content of a limits file, written to Dir/limits.yaml
	// and passed as --limits-file. Empty: no limits file. The file may be
	// rewritten (Sidecar.LimitsFile): the sidecar reloads it by itself, or on
	// SIGHUP. ConfigMapVolume lays one out as a ConfigMap volume does.
	Limits string
	// Flags are more flags for serve, after the harness's own. One that
	// sets --listen-address, --metrics-address, --log-format, --data-dir
	// or --database-url replaces the harness's flag.
	Flags []string
	// Env holds more environment variables (KEY=value) for the sidecar, on
	// top of the test process's own. A LLMUSAGE_* variable for one of the
	// settings Flags may replace (LLMUSAGE_LISTEN_ADDRESS...) also
	// replaces the harness's flag, so that the setting comes from the
	// environment as in a pod spec.
	Env []string
	// Dir is the sidecar's working directory, which holds the limits
	// file; default a new t.TempDir().
	Dir string
	// DataDir is passed as --data-dir (the embedded database, the spool,
	// the dead-letter file); default Dir/data.
	DataDir string
	// DefaultDataDir passes no --data-dir, so that the sidecar uses its
	// default, ./llmusage-data in Dir. DataDir is then ignored.
	DefaultDataDir bool
	// DatabaseURL is passed as --database-url. Empty (and no database
	// named in Flags or Env): the embedded SQLite database in the data dir.
	DatabaseURL string
	// NoWait makes Start return as soon as the sidecar has logged its
	// addresses, without waiting for Ready.
	NoWait bool
	// Ready is the condition Start (and Restart) waits for once the
	// addresses are logged; default Readyz. Healthz only asks that the
	// process answers.
	Ready func(s *Sidecar) bool
	// Timeout bounds the wait for the addresses and for Ready; default 60 s.
	Timeout time.Duration
}

// Readyz is the default Options.Ready: /readyz answers 200.
func Readyz(s *Sidecar) bool { return s.probe("/readyz") == http.StatusOK }

// Healthz is an Options.Ready for a sidecar that may not be ready yet (a
// full spool, say): /healthz answers 200, so the process serves.
func Healthz(s *Sidecar) bool { return s.probe("/healthz") == http.StatusOK }

// Sidecar is a running (or stopped) llmusage serve process of one test.
type Sidecar struct {
	// Client is the HTTP client of the methods, with a 10 s timeout; over
	// a unix socket, it reaches the API at APIURL through the socket.
	Client *http.Client
	// Dir is the working directory, DataDir the data directory ("" where
	// the harness does not choose it: with Options.DefaultDataDir it is
	// ./llmusage-data in Dir, or it is set in Options.Flags or Env).
	Dir, DataDir string
	// LimitsFile is the path of the limits file, "" without Options.Limits.
	LimitsFile string

	name string
	opts Options
	args []string // serve and its flags, but the two addresses
	log  *syncBuffer

	// Guarded by being used from the test's goroutine only.
	cmd     *exec.Cmd
	exited  chan error
	running bool
	// apiAddr and metricsAddr are the addresses bound at the first start
	// (apiAddr a socket path for a unix: address); restarts reuse them.
	apiAddr, metricsAddr string
	apiUnix              bool
	// logStart is where the current run's log begins; serving is set once
	// it logged its addresses.
	logStart int
	serving  bool
}

// unixHost is the host of APIURL over a unix socket.
const unixHost = "unix-socket"

// Start starts a sidecar with opts and waits until it is ready (see
// Options). It is killed when t ends; if t failed, its log is printed.
func Start(t testing.TB, opts Options) *Sidecar {
	t.Helper()
	s := newSidecar(t, opts, "sidecar")
	s.launch(t)
	s.waitStarted(t)
	return s
}

// StartN starts n sidecars with the same opts, as replicas sharing the
// backends that opts name (the database, a Redis URL in Flags, ...). Each
// gets a working directory and data directory of its own (replica-<i>
// under Options.Dir and Options.DataDir when these are set). The first
// starts alone, so that it alone applies the migrations of a shared
// database; the others start at once.
func StartN(t testing.TB, n int, opts Options) []*Sidecar {
	t.Helper()
	sidecars := make([]*Sidecar, n)
	for i := range sidecars {
		o := opts
		if o.Dir != "" {
			o.Dir = filepath.Join(opts.Dir, fmt.Sprintf("replica-%d", i+1))
		}
		if o.DataDir != "" {
			o.DataDir = filepath.Join(opts.DataDir, fmt.Sprintf("replica-%d", i+1))
		}
		sidecars[i] = newSidecar(t, o, fmt.Sprintf("sidecar %d of %d", i+1, n))
	}
	for i, s := range sidecars {
		s.launch(t)
		if i == 0 {
			s.waitStarted(t)
		}
	}
	for _, s := range sidecars[1:] {
		s.waitStarted(t)
	}
	return sidecars
}

func newSidecar(t testing.TB, opts Options, name string) *Sidecar {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Timeout == 0 {
		opts.Timeout = 60 * time.Second
	}
	if opts.Ready == nil {
		opts.Ready = Readyz
	}
	s := &Sidecar{name: name, opts: opts, Dir: opts.Dir, log: &syncBuffer{}}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s.args = []string{"serve"}
	if !opts.sets("log-format") {
		s.args = append(s.args, "--log-format", "json")
	}
	if !opts.DefaultDataDir && !opts.sets("data-dir") {
		s.DataDir = opts.DataDir
		if s.DataDir == "" {
			s.DataDir = filepath.Join(s.Dir, "data")
		}
		s.args = append(s.args, "--data-dir", s.DataDir)
	}
	if opts.DatabaseURL != "" {
		s.args = append(s.args, "--database-url", opts.DatabaseURL)
	}
	if opts.Limits != "" {
		s.LimitsFile = filepath.Join(s.Dir, "limits.yaml")
		if err := os.WriteFile(s.LimitsFile, []byte(opts.Limits), 0o644); err != nil {
			t.Fatal(err)
		}
		s.args = append(s.args, "--limits-file", s.LimitsFile)
	}
	s.args = append(s.args, opts.Flags...)

	transport := http.DefaultTransport.(*http.Transport).Clone()
	dial := transport.DialContext
	transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == unixHost+":80" && s.apiUnix {
			return (&net.Dialer{}).DialContext(ctx, "unix", s.apiAddr)
		}
		return dial(ctx, network, addr)
	}
	s.Client = &http.Client{Timeout: 10 * time.Second, Transport: transport}

	t.Cleanup(func() {
		if s.running {
			_ = s.cmd.Process.Kill()
			<-s.exited
			s.running = false
		}
		transport.CloseIdleConnections()
		log := s.Log()
		if strings.Contains(log, "WARNING: DATA RACE") {
			t.Errorf("the race detector reported a data race in %s", s.name)
		}
		if t.Failed() {
			const most = 256 << 10
			if len(log) > most {
				log = "[...]\n" + log[len(log)-most:]
			}
			t.Logf("%s log:\n%s", s.name, log)
		}
	})
	return s
}

// sets tells whether Flags or Env set the serve flag name.
func (o *Options) sets(name string) bool {
	for _, f := range o.Flags {
		if !strings.HasPrefix(f, "-") {
			continue // a value
		}
		f = strings.TrimLeft(f, "-")
		if f == name || strings.HasPrefix(f, name+"=") {
			return true
		}
	}
	env := "LLMUSAGE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "="
	return slices.ContainsFunc(o.Env, func(e string) bool { return strings.HasPrefix(e, env) })
}

// launch starts the process: on ports the kernel picks the first time, on
// the same ones later.
func (s *Sidecar) launch(t testing.TB) {
	t.Helper()
	args := s.args
	if s.metricsAddr != "" {
		// A restart keeps the addresses bound at the first start, given
		// as flags, which win over the environment.
		api := s.apiAddr
		if s.apiUnix {
			api = "unix:" + api
		}
		args = append(withoutFlags(args, "listen-address", "metrics-address"), "--listen-address", api, "--metrics-address", s.metricsAddr)
	} else {
		if !s.opts.sets("listen-address") {
			args = append(args, "--listen-address", "127.0.0.1:0")
		}
		if !s.opts.sets("metrics-address") {
			args = append(args, "--metrics-address", "127.0.0.1:0")
		}
	}
	if s.log.Len() > 0 {
		fmt.Fprintf(s.log, "--- sidecartest: restart at %s ---\n", time.Now().Format(time.StampMilli))
	}
	s.cmd = exec.Command(Binary(t), args...)
	s.cmd.Dir = s.Dir
	s.cmd.Env = append(os.Environ(), s.opts.Env...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	s.cmd.WaitDelay = 10 * time.Second
	s.logStart, s.serving = s.log.Len(), false
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("cannot start %s: %s", s.name, err)
	}
	s.running = true
	s.exited = make(chan error, 1)
	go func(cmd *exec.Cmd, exited chan<- error) { exited <- cmd.Wait() }(s.cmd, s.exited)
}

// withoutFlags drops the flags names (and their values) from args.
func withoutFlags(args []string, names ...string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		f := strings.TrimLeft(args[i], "-")
		if strings.HasPrefix(args[i], "-") && slices.Contains(names, f) {
			i++ // the value
			continue
		}
		if name, _, ok := strings.Cut(f, "="); ok && strings.HasPrefix(args[i], "-") && slices.Contains(names, name) {
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// errExited is waitStarted's error when the process exited.
type errExited struct{ err error }

func (e errExited) Error() string { return fmt.Sprintf("exited before it was ready: %v", e.err) }

// waitStarted waits for the addresses, then for Ready, failing t with the
// log if the process exits or the wait times out.
func (s *Sidecar) waitStarted(t testing.TB) {
	t.Helper()
	if err := s.awaitStarted(); err != nil {
		t.Fatalf("%s %s (its log follows)", s.name, err)
	}
}

func (s *Sidecar) awaitStarted() error {
	deadline := time.Now().Add(s.opts.Timeout)
	pause := 5 * time.Millisecond
	for {
		select {
		case err := <-s.exited:
			s.running = false
			return errExited{err}
		default:
		}
		if !s.serving {
			if api, metrics, ok := servingAddrs(s.log.From(s.logStart)); ok {
				s.serving = true
				if s.metricsAddr == "" {
					s.apiAddr, s.metricsAddr = api, metrics
					if _, _, err := net.SplitHostPort(api); err != nil { // a socket path
						s.apiUnix = true
						if !filepath.IsAbs(api) {
							s.apiAddr = filepath.Join(s.Dir, api)
						}
					}
				}
			}
		}
		if s.serving && (s.opts.NoWait || s.opts.Ready(s)) {
			return nil
		}
		if time.Now().After(deadline) {
			if !s.serving {
				return fmt.Errorf("logged no %q line within %s", servingMsg, s.opts.Timeout)
			}
			return fmt.Errorf("not ready within %s", s.opts.Timeout)
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
}

const servingMsg = "llmusage serving"

// servingText matches the api and metrics attributes of a text log line,
// quoted (strconv.Quote) when they hold spaces or quotes.
var servingText = regexp.MustCompile(`(?:^| )(api|metrics)=("(?:[^"\\]|\\.)*"|\S+)`)

// servingAddrs finds the "llmusage serving" line in log, JSON or text.
func servingAddrs(log string) (api, metrics string, ok bool) {
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, servingMsg) {
			continue
		}
		if strings.HasPrefix(line, "{") {
			var l struct{ Msg, API, Metrics string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == servingMsg && l.API != "" && l.Metrics != "" {
				return l.API, l.Metrics, true
			}
			continue
		}
		if !strings.Contains(line, `msg="`+servingMsg+`"`) {
			continue
		}
		attrs := map[string]string{}
		for _, m := range servingText.FindAllStringSubmatch(line, -1) {
			v := m[2]
			if strings.HasPrefix(v, `"`) {
				v, _ = strconv.Unquote(v)
			}
			attrs[m[1]] = v
		}
		if attrs["api"] != "" && attrs["metrics"] != "" {
			return attrs["api"], attrs["metrics"], true
		}
	}
	return "", "", false
}

func (s *Sidecar) probe(path string) int {
	resp, err := s.Client.Get(s.MetricsURL() + path)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// APIAddr is the API's bound address (host:port, or the socket path).
func (s *Sidecar) APIAddr() string { return s.apiAddr }

// MetricsAddr is the bound host:port of /metrics, /healthz and /readyz.
func (s *Sidecar) MetricsAddr() string { return s.metricsAddr }

// APIURL is the base URL of the API, such as http://127.0.0.1:41234. Over
// a unix socket it is http://unix-socket, which Client dials through the
// socket.
func (s *Sidecar) APIURL() string {
	if s.apiUnix {
		return "http://" + unixHost
	}
	return "http://" + s.apiAddr
}

// MetricsURL is the base URL of /metrics, /healthz and /readyz.
func (s *Sidecar) MetricsURL() string { return "http://" + s.metricsAddr }

// Post posts body to the API's path and returns the status code, the
// header and the JSON answer; t fails if the answer is not JSON.
func (s *Sidecar) Post(t testing.TB, path, contentType, body string) (int, http.Header, map[string]any) {
	t.Helper()
	resp, err := s.Client.Post(s.APIURL()+path, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %s", path, err)
	}
	return DecodeJSON(t, resp)
}

// PostJSON is Post with Content-Type application/json.
func (s *Sidecar) PostJSON(t testing.TB, path, body string) (int, http.Header, map[string]any) {
	t.Helper()
	return s.Post(t, path, "application/json", body)
}

// Get gets the API's path (with its query) and returns the status code and
// the JSON answer; t fails if the answer is not JSON.
func (s *Sidecar) Get(t testing.TB, path string) (int, map[string]any) {
	t.Helper()
	resp, err := s.Client.Get(s.APIURL() + path)
	if err != nil {
		t.Fatalf("GET %s: %s", path, err)
	}
	code, _, out := DecodeJSON(t, resp)
	return code, out
}

// Scrape returns /metrics; t fails unless it answers 200.
func (s *Sidecar) Scrape(t testing.TB) string {
	t.Helper()
	resp, err := s.Client.Get(s.MetricsURL() + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %s", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, b)
	}
	return string(b)
}

// Gauge scrapes /metrics and returns the value of the sample series, a
// metric name with its labels as exposed (llmusage_store_up,
// llm_requests_total{model="gpt-4",...}), or -1 if the scrape fails or
// has no such sample. It does not fail the test, so that it may be
// polled, also from other goroutines.
func (s *Sidecar) Gauge(series string) float64 {
	resp, err := s.Client.Get(s.MetricsURL() + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return -1
	}
	return Value(string(b), series)
}

// Value returns the value of the sample series in the exposition metrics,
// or -1 if it has none (see Gauge).
func Value(metrics, series string) float64 {
	for line := range strings.Lines(metrics) {
		if v, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), series+" "); ok {
			v, _, _ = strings.Cut(v, " ") // a timestamp
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return -1
			}
			return f
		}
	}
	return -1
}

// Log returns what the process (and its restarts) wrote to stderr and
// stdout so far.
func (s *Sidecar) Log() string { return s.log.String() }

// PID is the process id of the running process.
func (s *Sidecar) PID() int { return s.cmd.Process.Pid }

// Signal sends sig (SIGHUP, say) without waiting for anything.
func (s *Sidecar) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if !s.running {
		t.Fatalf("%s: signal %s: not running", s.name, sig)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: signal %s: %s", s.name, sig, err)
	}
}

// Stop sends sig (SIGTERM, SIGINT) and returns the exit error, nil for
// exit status 0; t fails if the process does not exit within 60 s.
func (s *Sidecar) Stop(t testing.TB, sig os.Signal) error {
	t.Helper()
	s.Signal(t, sig)
	select {
	case err := <-s.exited:
		s.running = false
		return err
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not exit within 60 s of %s", s.name, sig)
		return nil
	}
}

// Kill9 kills the process without warning, as the OOM killer or a node
// failure would, and waits for it.
func (s *Sidecar) Kill9(t testing.TB) {
	t.Helper()
	s.Signal(t, syscall.SIGKILL)
	<-s.exited
	s.running = false
}

// Restart starts the stopped sidecar again, on the addresses it bound at
// its first start and with the same data directory and options, and
// waits as Start does. A port another process took in the meantime fails
// t after retries for 10 s.
func (s *Sidecar) Restart(t testing.TB) {
	t.Helper()
	if s.running {
		t.Fatalf("%s: Restart: still running; stop it first (Stop, Kill9)", s.name)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.launch(t)
		err := s.awaitStarted()
		if err == nil {
			return
		}
		if _, exited := err.(errExited); !exited || !strings.Contains(s.log.From(s.logStart), "address already in use") {
			t.Fatalf("%s: restart: %s (its log follows)", s.name, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: cannot restart on the ports of its first start (API %s, metrics %s): another process took one of them (its log follows)",
				s.name, s.apiAddr, s.metricsAddr)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer that the process's output copier and the
// test may use at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// From returns the buffer from offset on.
func (b *syncBuffer) From(offset int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if offset < 0 || offset > b.buf.Len() {
		return ""
	}
	return string(b.buf.Bytes()[offset:])
}
