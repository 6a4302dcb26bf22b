package exporter

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCallsInFlight: a call counts from its start to its end, once
// however often end is called, under the user cap.
func TestCallsInFlight(t *testing.T) {
	e := New(Options{MaxUsers: 1})
	const head = "# HELP llm_calls_in_flight Calls this sidecar's proxy has upstream now (streams until they end), by user; users with none have no series.\n# TYPE llm_calls_in_flight gauge\n"
	want := func(lines string) {
		t.Helper()
		if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader(head+lines), "llm_calls_in_flight"); err != nil {
			t.Fatal(err)
		}
	}
	a1, a2 := e.CallStarted("alice"), e.CallStarted("alice")
	b := e.CallStarted("bob") // past the cap of 1 user
	want("llm_calls_in_flight{user=\"__other__\"} 1\nllm_calls_in_flight{user=\"alice\"} 2\n")
	a1()
	a1()
	b()
	want("llm_calls_in_flight{user=\"alice\"} 1\n")
	a2()
	if n, err := testutil.GatherAndCount(e.Registry(), "llm_calls_in_flight"); err != nil || n != 0 {
		t.Fatalf("%d series with no call in flight (%v), want none", n, err)
	}
}
