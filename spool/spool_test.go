package spool

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/usd"
)

func rec(i int) record.Record {
	return record.Record{
		RequestID: fmt.Sprintf("req-%d", i), UserID: "user \"quoted\"\n", Provider: "openai", Model: "gpt-4o",
		PromptTokens: int64(i), CompletionTokens: 2, TotalTokens: int64(i) + 2, CachedTokens: 1, ReasoningTokens: 1,
		Latency: 1500 * time.Microsecond, HasLatency: i%2 == 0, Status: record.StatusSuccess, ErrorType: "",
		Timestamp: time.Date(2026, 11, 27, 12, 0, 0, i, time.UTC), Metadata: []byte(`{ "kept":  "as is" }`),
		CacheWriteTokens: int64(i % 3), Cost: usd.Amount(i * 1234), HasCost: i%3 != 0,
		TeamID: []string{"", "team-a"}[i%2],
	}
}

// TestDecodeVersion1 reads a frame as the sidecar before costs wrote it:
// a spool left by an older version must drain after an upgrade.
func TestDecodeVersion1(t *testing.T) {
	want := rec(4)
	want.CacheWriteTokens, want.Cost, want.HasCost = 0, 0, false
	want.TeamID = ""
	frame := appendFrame(nil, &want)
	payload := frame[frameHeader:]
	// Version 2 appended two varints (zeros: one byte each) after the
	// metadata, version 3 an empty team_id (its length, one byte).
	v1 := append([]byte{codecVersionV1}, payload[1:len(payload)-3]...)
	got, err := decodePayload(v1)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
	if _, err := decodePayload(payload[:len(payload)-1]); err == nil {
		t.Fatal("a version 3 frame without its team_id decoded")
	}
}

// TestDecodeVersion2 reads a frame as the sidecar before teams wrote it.
func TestDecodeVersion2(t *testing.T) {
	want := rec(5)
	frame := appendFrame(nil, &want)
	payload := frame[frameHeader:]
	// Version 3 appended team_id (length and bytes) after the cost.
	v2 := append([]byte{codecVersionV2}, payload[1:len(payload)-1-len(want.TeamID)]...)
	got, err := decodePayload(v2)
	if err != nil {
		t.Fatal(err)
	}
	want.TeamID = ""
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
	team := rec(5)
	if got, err := decodePayload(payload); err != nil || got.TeamID != team.TeamID {
		t.Fatalf("decoded team_id %q (%v), want %q", got.TeamID, err, team.TeamID)
	}
}

func recs(from, n int) []record.Record {
	out := make([]record.Record, n)
	for i := range out {
		out[i] = rec(from + i)
	}
	return out
}

func open(t *testing.T, dir string, opts Options) *Spool {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// drain peeks and commits everything, returning the request ids in order.
func drain(t *testing.T, s *Spool, batch int) []string {
	t.Helper()
	var ids []string
	for {
		got, err := s.Peek(batch)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			return ids
		}
		for _, r := range got {
			ids = append(ids, r.RequestID)
		}
		if err := s.Commit(len(got)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	in := recs(0, 3)
	in[1].Metadata = nil
	in[2].Status, in[2].ErrorType = record.StatusError, "timeout"
	if err := s.Enqueue(in); err != nil {
		t.Fatal(err)
	}
	got, err := s.Peek(10)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, in) {
		t.Fatalf("read back\n%+v\nwant\n%+v", got, in)
	}
	// Peek again before Commit: the same records (a failed batch is retried).
	again, _ := s.Peek(10)
	if !reflect.DeepEqual(again, in) || s.Len() != 3 {
		t.Fatalf("second peek %d records, Len %d", len(again), s.Len())
	}
	if err := s.Commit(3); err != nil {
		t.Fatal(err)
	}
	if s.Len() != 0 || s.Bytes() != 0 {
		t.Fatalf("after commit: Len %d, Bytes %d", s.Len(), s.Bytes())
	}
}

func TestReplayAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{SegmentBytes: 400})
	if err := s.Enqueue(recs(0, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Enqueue(recs(10, 10)); err != nil {
		t.Fatal(err)
	}
	// Persist 7, then "crash" with 3 peeked but not committed.
	got, _ := s.Peek(7)
	if err := s.Commit(len(got)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Peek(3); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s2 := open(t, dir, Options{SegmentBytes: 400})
	if s2.Len() != 13 {
		t.Fatalf("after restart Len %d, want 13", s2.Len())
	}
	ids := drain(t, s2, 4)
	if len(ids) != 13 || ids[0] != "req-7" || ids[12] != "req-19" {
		t.Fatalf("replayed %v, want req-7..req-19 in order", ids)
	}
	// Persisted segments are deleted; only the segment being written remains.
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segs) != 1 {
		t.Fatalf("segments left after draining: %v", segs)
	}
	// Appends continue after a restart, and survive another one.
	if err := s2.Enqueue(recs(20, 2)); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	s3 := open(t, dir, Options{SegmentBytes: 400})
	if ids := drain(t, s3, 10); len(ids) != 2 || ids[0] != "req-20" {
		t.Fatalf("after a second restart: %v", ids)
	}
}

func TestTornTail(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	if err := s.Enqueue(recs(0, 3)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// A crash in the middle of writing a frame leaves half of it.
	seg := filepath.Join(dir, fmt.Sprintf("%020d.seg", 1))
	half := appendFrame(nil, &[]record.Record{rec(99)}[0])
	f, _ := os.OpenFile(seg, os.O_APPEND|os.O_WRONLY, 0)
	f.Write(half[:len(half)/2])
	f.Close()

	s2 := open(t, dir, Options{})
	if s2.Len() != 3 {
		t.Fatalf("Len %d after a torn tail, want the 3 whole records", s2.Len())
	}
	if err := s2.Enqueue(recs(3, 1)); err != nil {
		t.Fatal(err)
	}
	if ids := drain(t, s2, 10); fmt.Sprint(ids) != "[req-0 req-1 req-2 req-3]" {
		t.Fatalf("records %v", ids)
	}
}

func TestCorruptFrameDetected(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	if err := s.Enqueue(recs(0, 2)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	seg := filepath.Join(dir, fmt.Sprintf("%020d.seg", 1))
	b, _ := os.ReadFile(seg)
	b[len(b)-3] ^= 0xff // flip bits in the second record's payload
	os.WriteFile(seg, b, 0o640)
	s2 := open(t, dir, Options{})
	if s2.Len() != 1 {
		t.Fatalf("Len %d, want the 1 intact record", s2.Len())
	}
	// The dropped bytes were kept aside, not destroyed.
	kept, _ := filepath.Glob(seg + ".tail-*")
	cut, _ := os.ReadFile(seg)
	if len(kept) != 1 {
		t.Fatalf("tail files %v, want one", kept)
	}
	if tail, _ := os.ReadFile(kept[0]); !bytes.Equal(append(cut, tail...), b) {
		t.Fatalf("segment (%d bytes) and kept tail (%d) are not the damaged file (%d)", len(cut), len(tail), len(b))
	}
}

// TestDamagedFinishedSegment: a frame that does not check out in a
// segment before the last, found when the spool opens or only when it is
// read, costs the records after it in that segment, and nothing else:
// later segments are read, the damage is logged, and the segment is kept
// aside as .corrupt instead of being deleted.
func TestDamagedFinishedSegment(t *testing.T) {
	f := func(damageBeforeOpen bool) {
		t.Helper()
		dir := t.TempDir()
		var log strings.Builder
		opts := Options{SegmentBytes: 1024, Logger: slog.New(slog.NewTextHandler(&log, nil))}
		s := open(t, dir, opts)
		for i := 0; i < 40; i++ {
			if err := s.Enqueue(recs(i, 1)); err != nil {
				t.Fatal(err)
			}
		}
		seg1 := filepath.Join(dir, fmt.Sprintf("%020d.seg", 1))
		damage := func() {
			b, err := os.ReadFile(seg1)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0xff
			if err := os.WriteFile(seg1, b, 0o640); err != nil {
				t.Fatal(err)
			}
		}
		if damageBeforeOpen {
			s.Close()
			damage()
			s = open(t, dir, opts)
		} else {
			damage()
		}
		ids := drain(t, s, 7)
		if len(ids) < 30 || len(ids) >= 40 || ids[len(ids)-1] != "req-39" {
			t.Fatalf("read %d records ending %v; want most of the 40, through req-39", len(ids), ids[len(ids)-1:])
		}
		if !strings.Contains(log.String(), "damaged") {
			t.Fatalf("no damage logged: %s", log.String())
		}
		if _, err := os.Stat(seg1 + ".corrupt"); err != nil {
			t.Fatalf("the damaged segment was not kept aside: %v", err)
		}
		// The backlog's bytes come back to zero; its records too when the
		// damage was found at Open (found later, the lost ones are not known).
		if s.Bytes() != 0 || damageBeforeOpen && s.Len() != 0 {
			t.Fatalf("after draining: %d bytes, %d records; want 0", s.Bytes(), s.Len())
		}
		// Passed once, the damage is not logged again by idle reads.
		logged := strings.Count(log.String(), "damaged")
		for i := 0; i < 3; i++ {
			if got, err := s.Peek(10); err != nil || len(got) != 0 {
				t.Fatalf("idle Peek: %d records, %v", len(got), err)
			}
		}
		if again := strings.Count(log.String(), "damaged"); again != logged {
			t.Fatalf("the damage was logged %d times, then %d after idle reads", logged, again)
		}
	}
	f(true)
	f(false)
}

func TestFull(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxBytes: 1000})
	if err := s.Enqueue(recs(0, 5)); err != nil {
		t.Fatal(err)
	}
	before := s.Len()
	err := s.Enqueue(recs(5, 20))
	if !errors.Is(err, ErrFull) {
		t.Fatalf("over the bound: %v, want ErrFull", err)
	}
	if s.Len() != before {
		t.Fatalf("a refused append changed Len from %d to %d", before, s.Len())
	}
	if err := s.Err(); !errors.Is(err, ErrFull) {
		t.Fatalf("Err %v after a refused append, want ErrFull", err)
	}
	// Draining makes room again.
	drain(t, s, 100)
	if err := s.Err(); err != nil {
		t.Fatalf("Err %v after draining", err)
	}
	if err := s.Enqueue(recs(5, 5)); err != nil {
		t.Fatal(err)
	}
}

// TestRefusedWithoutTrace: a record the readers could not read back is
// refused before anything is acknowledged, and an empty append, which
// used to wait for a leader that writes only batches with records, takes
// nothing and returns at once even while others append.
func TestRefusedWithoutTrace(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	huge := recs(0, 2)
	huge[1].Metadata = []byte(`{"pad":"` + string(make([]byte, MaxRecordBytes)) + `"}`)
	if err := s.Enqueue(huge); !errors.Is(err, ErrTooLarge) || s.Len() != 0 {
		t.Fatalf("a record over the bound: %v, Len %d; want ErrTooLarge and 0", err, s.Len())
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if err := s.Enqueue(recs(w*100+i, 1)); err != nil {
					t.Error(err)
				}
			}
		}()
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if err := s.Enqueue(nil); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if got := drain(t, s, 1000); len(got) != 200 {
		t.Fatalf("%d records read back, want 200", len(got))
	}
}

func TestConcurrentAppendsGroupCommit(t *testing.T) {
	s := open(t, t.TempDir(), Options{SegmentBytes: 4096})
	const writers, each = 8, 50
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if err := s.Enqueue(recs(w*1000+i, 1)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	// The consumer reads concurrently with the appends.
	seen := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for len(seen) < writers*each {
		for _, id := range drain(t, s, 7) {
			if seen[id] {
				t.Fatalf("%s read twice", id)
			}
			seen[id] = true
		}
		if time.Now().After(deadline) {
			t.Fatalf("read %d of %d records", len(seen), writers*each)
		}
	}
	wg.Wait()
	if s.Len() != 0 {
		t.Fatalf("Len %d after draining", s.Len())
	}
}

func TestUnwritable(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	s.file.Close() // the disk goes away under the spool
	err := s.Enqueue(recs(0, 1))
	if err == nil || s.Err() == nil {
		t.Fatalf("append to a closed segment: %v, Err %v", err, s.Err())
	}
	if s.Len() != 0 {
		t.Fatalf("a failed append counts %d records", s.Len())
	}
}

// TestTornCheckpoint: a checkpoint damaged by a crash replays from the
// oldest segment instead of refusing to start; the store's request_id
// makes the replay harmless.
func TestTornCheckpoint(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	if err := s.Enqueue(recs(0, 4)); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Peek(2)
	if err := s.Commit(len(got)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := os.WriteFile(filepath.Join(dir, "checkpoint"), []byte("\x00\x00"), 0o640); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, dir, Options{})
	if ids := drain(t, s2, 10); fmt.Sprint(ids) != "[req-0 req-1 req-2 req-3]" {
		t.Fatalf("replayed %v, want every record of the segment", ids)
	}
}

func TestScan(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{SegmentBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Enqueue(recs(0, 100)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Peek(30); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(30); err != nil {
		t.Fatal(err)
	}
	var ids []string
	if err := s.Scan(func(r *record.Record) { ids = append(ids, r.RequestID) }); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 70 || ids[0] != "req-30" || ids[69] != "req-99" {
		t.Fatalf("scanned %d records, %v..., want req-30 to req-99", len(ids), ids[:min(3, len(ids))])
	}
	// Nothing was consumed: the next Peek starts at the same record.
	got, err := s.Peek(1)
	if err != nil || len(got) != 1 || got[0].RequestID != "req-30" {
		t.Fatalf("Peek after Scan: %v, %v", got, err)
	}
}

// TestOpenRefusesALockedDir: a second Open of a spool in use fails with
// an error that names the holder, and succeeds once the first is closed.
func TestOpenRefusesALockedDir(t *testing.T) {
	dir := t.TempDir()
	first, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("another llmusage (pid %d) holds it", os.Getpid())) {
		t.Fatalf("a second Open of a spool in use: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	second.Close()
}
