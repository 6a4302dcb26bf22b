package loadgen

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// TestConn drives the hand-written client against net/http's server:
// every way an answer's body can be framed, and the connection's reuse.
func TestConn(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "bad request head: "+r.Method+" "+r.Header.Get("Content-Type")+" "+r.Header.Get("Authorization"), http.StatusBadRequest)
			return
		}
		switch r.URL.Path {
		case "/base/echo": // Content-Length
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write(body)
		case "/base/chunked":
			for _, part := range strings.SplitAfter(string(body), ",") {
				_, _ = io.WriteString(w, part)
				w.(http.Flusher).Flush()
			}
		case "/base/close":
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, "closing")
		default:
			http.NotFound(w, r)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	ep, err := parseTarget(srv.URL + "/base/")
	if err != nil {
		t.Fatal(err)
	}
	c := &conn{ep: ep}
	defer c.close()
	f := func(path, body string, wantStatus int, wantBody string) {
		t.Helper()
		status, got, err := c.do(context.Background(), path, "application/json", "tok", []byte(body))
		if err != nil || status != wantStatus || string(got) != wantBody {
			t.Fatalf("POST %s: %d %q %v; want %d %q", path, status, got, err, wantStatus, wantBody)
		}
	}
	f("/echo", `{"a":1}`, http.StatusAccepted, `{"a":1}`)
	f("/echo", "", http.StatusAccepted, "")
	f("/chunked", "one,two,three", http.StatusOK, "one,two,three")
	f("/missing", "x", http.StatusNotFound, "404 page not found\n")
	if conns.Load() != 1 {
		t.Fatalf("%d connections for four requests: keep-alive is broken", conns.Load())
	}
	f("/close", "x", http.StatusTooManyRequests, "closing")
	f("/echo", "after close", http.StatusAccepted, "after close")
	if conns.Load() != 2 {
		t.Fatalf("%d connections: want a new one after Connection: close", conns.Load())
	}

	// A unix socket target.
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	us := &http.Server{Handler: BaselineHandler()}
	go func() { _ = us.Serve(ln) }()
	defer us.Close()
	ep, err = parseTarget("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	uc := &conn{ep: ep}
	defer uc.close()
	if status, got, err := uc.do(context.Background(), "/v1/calls", "application/json", "", []byte("{}")); err != nil || status != http.StatusAccepted || string(got) != "{\"accepted\":1}\n" {
		t.Fatalf("unix socket: %d %q %v", status, got, err)
	}

	for _, bad := range []string{"ftp://x", "127.0.0.1:9470", "http://"} {
		if _, err := parseTarget(bad); err == nil || !strings.Contains(err.Error(), "cannot use --target") {
			t.Fatalf("parseTarget(%q): %v", bad, err)
		}
	}
}
