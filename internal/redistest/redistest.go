// Package redistest gives tests real Redis servers: a standalone one, or
// a Redis Cluster of three masters, each started from the machine's
// redis-server in a temporary directory and stopped when the test ends.
// Without redis-server the tests are skipped, or fail under make test
// (sidecartest.RequireTool).
package redistest

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/sidecartest"
)

// Server is one redis-server process of a test.
type Server struct {
	// Addr is host:port.
	Addr string
	// bin is the redis-server binary.
	bin string
	// dir holds its files.
	dir string
	// args are its flags but the port.
	args []string
	// cmd is the running process, nil while stopped.
	cmd *exec.Cmd
	// log collects its output, for a failing test.
	log *logBuffer
	// paused is set between Pause and Resume.
	paused bool
}

// URL is the server's redis:// URL.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Start starts a standalone Redis without persistence.
func Start(t testing.TB) *Server {
	t.Helper()
	s := newServer(t, nil)
	s.startOnFreePort(t)
	return s
}

// Stop stops the server (SIGKILL: an outage, not a shutdown), keeping its
// address for Restart.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd, s.paused = nil, false
}

// Restart starts a stopped server again on the same address, empty: the
// server runs without persistence (--save "" --appendonly no), so a
// Stop and Restart is a Redis that lost everything.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if err := s.start(); err != nil {
		t.Fatalf("cannot restart redis-server on %s: %s\n%s", s.Addr, err, s.log)
	}
}

// Pause freezes the server (SIGSTOP) without losing its data: it still
// accepts connections (the kernel does), but answers nothing, so every
// call waits for its client's timeout, as with a Redis that hangs or a
// network partition. Resume thaws it with its data. A paused server is
// thawed when the test ends, so that Stop can reap it.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	if s.cmd == nil {
		t.Fatalf("redis-server %s: Pause: not running", s.Addr)
	}
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("redis-server %s: SIGSTOP: %s", s.Addr, err)
	}
	s.paused = true
}

// Resume thaws a server Pause froze (SIGCONT): it answers again, with the
// data it held.
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	if s.cmd == nil || !s.paused {
		t.Fatalf("redis-server %s: Resume: not paused", s.Addr)
	}
	if err := s.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("redis-server %s: SIGCONT: %s", s.Addr, err)
	}
	s.paused = false
}

// Do sends one command and returns the server's reply line, for a test
// that inspects or changes Redis directly. Array and bulk replies come
// back as their lines joined by newlines.
func (s *Server) Do(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("redis-cli", append([]string{"-h", "127.0.0.1", "-p", s.port()}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %s: %s: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// Cluster is a Redis Cluster.
type Cluster struct {
	// Nodes are its servers: the masters first, then their replicas.
	Nodes []*Server
}

// MasterOf returns the running node that serves key as a master now.
func (c *Cluster) MasterOf(t testing.TB, key string) *Server {
	t.Helper()
	var slot string
	for _, s := range c.Nodes {
		if s.cmd != nil {
			slot = strings.TrimSpace(s.Do(t, "CLUSTER", "KEYSLOT", key))
			break
		}
	}
	for _, s := range c.Nodes {
		if s.cmd != nil && s.ownsSlot(t, slot) {
			return s
		}
	}
	t.Fatalf("no running master serves slot %s", slot)
	return nil
}

// ownsSlot tells whether s is a master serving slot now.
func (s *Server) ownsSlot(t testing.TB, slot string) bool {
	t.Helper()
	out, err := exec.Command("redis-cli", "-p", s.port(), "CLUSTER", "NODES").Output()
	if err != nil {
		return false
	}
	n, _ := strconv.Atoi(slot)
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || !strings.Contains(f[2], "myself") || !strings.Contains(f[2], "master") {
			continue
		}
		for _, r := range f[8:] {
			lo, hi, found := strings.Cut(r, "-")
			if !found {
				hi = lo
			}
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if err1 == nil && err2 == nil && a <= n && n <= b {
				return true
			}
		}
	}
	return false
}

// URL is a redis:// URL naming the cluster's first node; a cluster
// client discovers the others from it.
func (c *Cluster) URL() string { return "redis://" + c.Nodes[0].Addr }

// StartCluster starts n masters (at least 3) and joins them into one
// cluster covering every slot.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	return startCluster(t, n, 0, 5000)
}

// StartClusterWithReplicas starts masters (at least 3), each with one
// replica, that fail over after a node is unreachable for a second.
func StartClusterWithReplicas(t testing.TB, masters int) *Cluster {
	t.Helper()
	return startCluster(t, masters*2, 1, 1000)
}

func startCluster(t testing.TB, n, replicas, nodeTimeoutMs int) *Cluster {
	t.Helper()
	c := &Cluster{}
	for i := 0; i < n; i++ {
		s := newServer(t, []string{"--cluster-enabled", "yes", "--cluster-node-timeout", strconv.Itoa(nodeTimeoutMs)})
		s.args = append(s.args, "--cluster-config-file", filepath.Join(s.dir, "nodes.conf"))
		// The cluster bus listens on port+10000: pick ports that leave room.
		s.startOnFreePort(t)
		c.Nodes = append(c.Nodes, s)
	}
	addrs := make([]string, n)
	for i, s := range c.Nodes {
		addrs[i] = s.Addr
	}
	create := exec.Command("redis-cli", append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")...)
	if out, err := create.CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %s\n%s", err, out)
	}
	sidecartest.WaitFor(t, 30*time.Second, func() bool {
		for _, s := range c.Nodes {
			out, err := exec.Command("redis-cli", "-p", s.port(), "cluster", "info").Output()
			if err != nil || !strings.Contains(string(out), "cluster_state:ok") {
				return false
			}
		}
		return true
	}, "the Redis Cluster did not reach cluster_state:ok")
	if replicas > 0 {
		// A replica that has not synced with its master yet cannot take
		// over from it.
		sidecartest.WaitFor(t, 60*time.Second, func() bool {
			synced := 0
			for _, s := range c.Nodes {
				out, err := exec.Command("redis-cli", "-p", s.port(), "info", "replication").Output()
				if err == nil && strings.Contains(string(out), "master_link_status:up") {
					synced++
				}
			}
			return synced == n/(replicas+1)*replicas
		}, "the Redis Cluster's replicas did not sync with their masters")
	}
	return c
}

func newServer(t testing.TB, extra []string) *Server {
	t.Helper()
	bin := sidecartest.RequireTool(t, "redis-server")
	sidecartest.RequireTool(t, "redis-cli")
	dir := t.TempDir()
	s := &Server{bin: bin, dir: dir, log: &logBuffer{},
		args: append([]string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, "--protected-mode", "no"}, extra...)}
	t.Cleanup(func() {
		s.Stop(t)
		if t.Failed() {
			t.Logf("redis-server %s log:\n%s", s.Addr, s.log)
		}
	})
	return s
}

// startOnFreePort starts the server on a port that is free, with its
// cluster bus port (+10000) free too. Redis cannot bind port 0 and say
// which port it got, so a port is picked and the start retried when
// another process took it meanwhile.
func (s *Server) startOnFreePort(t testing.TB) {
	t.Helper()
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		port := 20000 + rand.IntN(25000)
		if !free(port) || !free(port+10000) {
			continue
		}
		s.Addr = "127.0.0.1:" + strconv.Itoa(port)
		if err = s.start(); err == nil {
			return
		}
	}
	t.Fatalf("cannot start redis-server: %s\n%s", err, s.log)
}

func (s *Server) port() string {
	_, port, _ := net.SplitHostPort(s.Addr)
	return port
}

// start runs redis-server on s.Addr and waits until it answers PING.
func (s *Server) start() error {
	cmd := exec.Command(s.bin, append([]string{"--port", s.port()}, s.args...)...)
	cmd.Dir = s.dir
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.log.WriteString(sc.Text() + "\n")
		}
		close(exited)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			_ = cmd.Wait()
			return fmt.Errorf("redis-server on %s exited at start", s.Addr)
		default:
		}
		if ping(s.Addr) {
			s.cmd = cmd
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	return fmt.Errorf("redis-server on %s did not answer PING within 10 s", s.Addr)
}

func free(port int) bool {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

func ping(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// logBuffer collects a process's output while the test may read it.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *logBuffer) WriteString(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.WriteString(s)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
