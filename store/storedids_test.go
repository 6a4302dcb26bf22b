package store

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/llmusage/llmusage/record"
)

// TestStoredIDs: the request_ids of one user that are stored, over more
// than one chunk, and not another user's.
func TestStoredIDs(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, _ func(string)) {
		ctx := context.Background()
		t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
		var recs []record.Record
		var ask []string
		for i := range storedIDsChunk + 5 {
			id := fmt.Sprintf("r%d", i)
			ask = append(ask, id)
			if i%2 == 0 {
				recs = append(recs, rec(id, "alice", "openai", "gpt-4o", 1, 1, t0))
			}
		}
		recs = append(recs, rec("bob-1", "bob", "openai", "gpt-4o", 1, 1, t0))
		if _, err := s.Insert(ctx, recs); err != nil {
			t.Fatal(err)
		}
		got, err := s.StoredIDs(ctx, "alice", append(ask, "bob-1", "nowhere"))
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		var want []string
		for _, r := range recs[:len(recs)-1] {
			want = append(want, r.RequestID)
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("stored: %d ids, want %d (alice's even ones)", len(got), len(want))
		}
	})
}
