// Package pgtest gives tests a real, empty Postgres database.
//
// It uses the server at DATABASE_URL when set. Otherwise it starts a
// throwaway server from the PostgreSQL binaries on PATH or under
// /usr/lib/postgresql/*/bin in a temporary directory, and removes it when
// the test binary ends (call Main from TestMain). initdb refuses to run as
// root; there, and wherever no binaries are found, tests that need
// Postgres are skipped, unless LLMUSAGE_TEST_REQUIRE_POSTGRES=1, under
// which they fail: CI sets it so that a missing database cannot pass
// unnoticed.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Main runs the tests and stops a throwaway server, if one was started.
func Main(m *testing.M) int {
	code := m.Run()
	server.stop()
	return code
}

// URL creates a fresh database for t, dropped when t ends, and returns its URL.
func URL(t testing.TB) string {
	t.Helper()
	base, err := server.url()
	if err != nil {
		if os.Getenv("LLMUSAGE_TEST_REQUIRE_POSTGRES") == "1" {
			t.Fatalf("Postgres is required (LLMUSAGE_TEST_REQUIRE_POSTGRES=1) but unavailable: %s", err)
		}
		t.Skipf("no Postgres: %s (set DATABASE_URL, or LLMUSAGE_TEST_REQUIRE_POSTGRES=1 to fail instead)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("cannot connect to the test server: %s", err)
	}
	defer admin.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "llmusage_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("cannot create a test database: %s", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, base); err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			c.Close(ctx)
		}
	})
	u, _ := url.Parse(base)
	u.Path = "/" + name
	return u.String()
}

var server = &testServer{}

// testServer is the server all tests of one binary share.
type testServer struct {
	once sync.Once
	base string
	err  error
	// dir and pgCtl are set when this process started the server.
	dir, pgCtl string
}

func (s *testServer) url() (string, error) {
	s.once.Do(func() {
		if u := os.Getenv("DATABASE_URL"); u != "" {
			s.base = u
			return
		}
		s.base, s.err = s.start()
	})
	return s.base, s.err
}

func (s *testServer) start() (string, error) {
	if os.Geteuid() == 0 {
		return "", errors.New("DATABASE_URL is not set, and initdb cannot run as root to start a throwaway server")
	}
	bin, err := findBinDir()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "llmusage-pg")
	if err != nil {
		return "", err
	}
	s.dir, s.pgCtl = dir, filepath.Join(bin, "pg_ctl")
	data := filepath.Join(dir, "data")
	if out, err := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync").CombinedOutput(); err != nil {
		return "", fmt.Errorf("initdb: %s: %s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return "", err
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", port, dir)
	if out, err := exec.Command(s.pgCtl, "-D", data, "-o", opts, "-l", filepath.Join(dir, "log"), "-w", "start").CombinedOutput(); err != nil {
		return "", fmt.Errorf("pg_ctl start: %s: %s", err, out)
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port), nil
}

func (s *testServer) stop() {
	if s.dir == "" {
		return
	}
	_ = exec.Command(s.pgCtl, "-D", filepath.Join(s.dir, "data"), "-m", "immediate", "stop").Run()
	_ = os.RemoveAll(s.dir)
}

func findBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("no PostgreSQL binaries (initdb) on PATH or under /usr/lib/postgresql/*/bin")
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
