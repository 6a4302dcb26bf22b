package pgtest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
)

// Server is a PostgreSQL server of one test's own, which the test may stop
// and start to inject an outage. As root (where initdb refuses to run) it
// runs as the postgres user.
type Server struct {
	bin, dir string
	port     int
	// asUser prefixes commands when they must run as another user.
	asUser []string
	// settings are the server's -c parameters beyond the defaults.
	settings []string
}

// StartServer initialises and starts a server in a temporary directory,
// removed when t ends. Without PostgreSQL binaries the test is skipped, or
// fails under LLMUSAGE_TEST_REQUIRE_POSTGRES=1. Settings are name=value
// parameters of the server (max_connections=120).
func StartServer(t testing.TB, settings ...string) *Server {
	t.Helper()
	s, err := startServer(t, settings)
	if err != nil {
		if os.Getenv("LLMUSAGE_TEST_REQUIRE_POSTGRES") == "1" {
			t.Fatalf("Postgres is required (LLMUSAGE_TEST_REQUIRE_POSTGRES=1) but cannot be started: %s", err)
		}
		t.Skipf("cannot start Postgres: %s", err)
	}
	t.Cleanup(func() {
		_ = s.pgCtl("-m", "immediate", "stop")
		_ = os.RemoveAll(s.dir)
	})
	return s
}

func startServer(t testing.TB, settings []string) (*Server, error) {
	bin, err := findBinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "llmusage-pgserver")
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin, dir: dir, settings: settings}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs a postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
		s.asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	if s.port, err = freePort(); err != nil {
		return nil, err
	}
	if out, err := s.run(filepath.Join(bin, "initdb"), "-D", s.data(), "-U", "postgres", "--auth=trust", "--no-sync"); err != nil {
		return nil, fmt.Errorf("initdb: %s: %s", err, out)
	}
	if err := s.Start(); err != nil {
		return nil, err
	}
	return s, nil
}

// URL is the server's postgres database.
func (s *Server) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
}

// Stop shuts the server down at once, dropping connections, as a crash or
// a failover would.
func (s *Server) Stop() error { return s.pgCtl("-m", "immediate", "stop") }

// Start starts the server and waits until it accepts connections.
func (s *Server) Start() error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", s.port, s.dir)
	for _, kv := range s.settings {
		opts += " -c " + kv
	}
	return s.pgCtl("-o", opts, "-l", filepath.Join(s.dir, "log"), "-w", "start")
}

func (s *Server) pgCtl(args ...string) error {
	out, err := s.run(filepath.Join(s.bin, "pg_ctl"), append([]string{"-D", s.data()}, args...)...)
	if err != nil {
		return fmt.Errorf("pg_ctl %v: %s: %s", args, err, out)
	}
	return nil
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

func (s *Server) run(name string, args ...string) ([]byte, error) {
	argv := append(append(append([]string(nil), s.asUser...), name), args...)
	return exec.Command(argv[0], argv[1:]...).CombinedOutput()
}
