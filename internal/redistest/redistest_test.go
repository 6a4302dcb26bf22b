package redistest

import (
	"strings"
	"testing"
)

func TestStandalone(t *testing.T) {
	s := Start(t)
	if got := s.Do(t, "SET", "k", "v"); got != "OK" {
		t.Fatalf("SET: %q", got)
	}
	s.Stop(t)
	if ping(s.Addr) {
		t.Fatal("answers PING after Stop")
	}
	s.Restart(t)
	if got := s.Do(t, "GET", "k"); got != "" {
		t.Fatalf("GET after a restart: %q, want nothing (no persistence)", got)
	}
}

func TestCluster(t *testing.T) {
	c := StartCluster(t, 3)
	info := c.Nodes[0].Do(t, "CLUSTER", "INFO")
	if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:3") {
		t.Fatalf("cluster info:\n%s", info)
	}
}
