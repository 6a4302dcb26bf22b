package store

import (
	"context"
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/record"
)

// persistBatch is the rows per op of the persistence benchmarks:
// bench/run.sh sets it to the sidecar's --batch-size, so that its
// ceiling, a raw COPY, copies as many rows at a time as the sidecar does.
var persistBatch = flag.Int("persist-batch", 1000, "rows per op of BenchmarkPersist*")

// BenchmarkPersistPostgres compares, in one run and one database, the rows
// per second that reach llm_usage_logs through the batched Writer (a COPY
// straight into the table) with a raw COPY of the same rows, the physical
// limit. Each op is one batch of -persist-batch records.
func BenchmarkPersistPostgres(b *testing.B) {
	batchSize := *persistBatch
	s := openMigratedB(b, Options{DatabaseURL: pgtest.URL(b)}).(*postgresStore)
	ctx := context.Background()
	seq := 0
	batch := func() []record.Record {
		recs := make([]record.Record, batchSize)
		for i := range recs {
			seq++
			// Increasing IDs, as the sidecar's own (UUID version 7) are.
			recs[i] = record.Record{RequestID: fmt.Sprintf("bench-%012d", seq), UserID: fmt.Sprintf("user-%d", seq%1000),
				Provider: "openai", Model: "gpt-4o", PromptTokens: 1200, CompletionTokens: 350, TotalTokens: 1550,
				Latency: 812 * time.Millisecond, HasLatency: true, Status: record.StatusSuccess, Timestamp: t0,
				Metadata: []byte(`{"route":"/chat"}`), Cost: 7_900_000, HasCost: true}
		}
		return recs
	}
	// Each run starts from an empty table, so that neither side pays for
	// the other's index growth.
	truncate := func(b *testing.B) {
		if _, err := s.pool.Exec(ctx, "TRUNCATE llm_usage_logs"); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("raw-copy", func(b *testing.B) {
		truncate(b)
		for b.Loop() {
			recs := batch()
			// The rows the writer's COPY sends, with none of its work around it.
			_, err := s.pool.CopyFrom(ctx, pgx.Identifier{"llm_usage_logs"}, incomingColumns, recordRows(recs))
			if err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "rows/s")
	})
	b.Run("writer", func(b *testing.B) {
		truncate(b)
		w := NewWriter(s, NewMemoryQueue(10*batchSize), WriterOptions{BatchSize: batchSize})
		for b.Loop() {
			if err := w.Enqueue(batch()); err != nil {
				b.Fatal(err)
			}
			if err := w.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "rows/s")
	})
	// A replay: each batch starts with the last record of the one before,
	// stored already, so that every batch takes the path that skips what
	// is stored (the COPY into the table fails on the duplicate).
	b.Run("writer-replay", func(b *testing.B) {
		truncate(b)
		w := NewWriter(s, NewMemoryQueue(10*batchSize), WriterOptions{BatchSize: batchSize})
		var last []record.Record
		for b.Loop() {
			recs := batch()
			if last != nil {
				recs = append(last, recs[1:]...)
			}
			last = recs[len(recs)-1:]
			if err := w.Enqueue(recs); err != nil {
				b.Fatal(err)
			}
			if err := w.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*(batchSize-1))/b.Elapsed().Seconds(), "rows/s")
	})
}

// BenchmarkPersistSQLite is the embedded store's rate through the Writer.
func BenchmarkPersistSQLite(b *testing.B) {
	batchSize := *persistBatch
	s := openMigratedB(b, Options{DataDir: b.TempDir()})
	w := NewWriter(s, NewMemoryQueue(10*batchSize), WriterOptions{BatchSize: batchSize})
	seq := 0
	for b.Loop() {
		recs := make([]record.Record, batchSize)
		for i := range recs {
			seq++
			recs[i] = rec(fmt.Sprintf("bench-%012d", seq), "u", "openai", "gpt-4o", 1200, 350, t0)
		}
		if err := w.Enqueue(recs); err != nil {
			b.Fatal(err)
		}
		if err := w.Flush(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batchSize)/b.Elapsed().Seconds(), "rows/s")
}

func openMigratedB(b *testing.B, opts Options) Store {
	b.Helper()
	ctx := context.Background()
	s, err := Open(ctx, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	if _, err := s.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	return s
}
