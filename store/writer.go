package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/llmusage/llmusage/record"
)

// ErrQueueFull is returned by Enqueue when the records would not fit;
// none of them was taken.
var ErrQueueFull = errors.New("cannot queue records for persistence: the queue is full")

// WriterObserver is told about every flush, for metrics.
type WriterObserver interface {
	// ObserveFlush reports a batch of n records written in d, or failed with err.
	ObserveFlush(n int, d time.Duration, err error)
}

// WriterOptions tune a Writer. Zero values take the defaults.
type WriterOptions struct {
	// BatchSize is the most records one transaction writes (1000), and the
	// queue length that triggers a flush before the interval is up.
	BatchSize int
	// FlushInterval is the longest a record waits in the queue while the
	// store is healthy (1s).
	FlushInterval time.Duration
	// MaxQueue bounds the queued records (100,000): past it, Enqueue
	// refuses rather than growing memory without limit.
	MaxQueue int
	// Observer receives flush outcomes; optional.
	Observer WriterObserver
	// Logger logs failed flushes; slog.Default() when nil.
	Logger *slog.Logger
}

// Writer persists records asynchronously in batches, so that neither
// intake nor checks wait for the database. A batch that fails stays at the
// head of the queue and is retried with backoff: records leave the queue
// only once stored.
type Writer struct {
	store Store
	opts  WriterOptions

	mu    sync.Mutex
	queue []record.Record
	// lastErr is the error of the last flush, nil after a success.
	lastErr error

	// kick wakes Run when the queue reaches a batch.
	kick chan struct{}
}

// NewWriter returns a Writer over s; call Run to start it.
func NewWriter(s Store, opts WriterOptions) *Writer {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1000
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	if opts.MaxQueue <= 0 {
		opts.MaxQueue = 100_000
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Writer{store: s, opts: opts, kick: make(chan struct{}, 1)}
}

// Enqueue queues all of recs, or none of them with ErrQueueFull.
func (w *Writer) Enqueue(recs []record.Record) error {
	w.mu.Lock()
	if len(w.queue)+len(recs) > w.opts.MaxQueue {
		w.mu.Unlock()
		return fmt.Errorf("%w (%d records queued, --queue-max-records %d)", ErrQueueFull, len(w.queue), w.opts.MaxQueue)
	}
	w.queue = append(w.queue, recs...)
	full := len(w.queue) >= w.opts.BatchSize
	w.mu.Unlock()
	if full {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// Len returns the number of records waiting.
func (w *Writer) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.queue)
}

// Err returns the error of the last flush, or nil if it succeeded.
func (w *Writer) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

// Run flushes by size or interval until ctx ends. After a failed flush it
// waits longer, up to 30 s, before retrying.
func (w *Writer) Run(ctx context.Context) {
	wait := w.opts.FlushInterval
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-w.kick:
		}
		if err := w.Flush(ctx); err != nil {
			wait = min(2*wait, 30*time.Second)
		} else {
			wait = w.opts.FlushInterval
		}
		timer.Reset(wait)
	}
}

// Flush writes every queued record, batch by batch, and stops at the first
// failure, which it returns; the failed batch stays queued.
func (w *Writer) Flush(ctx context.Context) error {
	for {
		w.mu.Lock()
		n := min(len(w.queue), w.opts.BatchSize)
		// The batch is a copy: Enqueue may append (and reallocate) meanwhile.
		batch := append([]record.Record(nil), w.queue[:n]...)
		w.mu.Unlock()
		if n == 0 {
			return nil
		}
		start := time.Now()
		_, err := w.store.Insert(ctx, batch)
		if w.opts.Observer != nil {
			w.opts.Observer.ObserveFlush(n, time.Since(start), err)
		}
		w.mu.Lock()
		w.lastErr = err
		if err == nil {
			w.queue = w.queue[n:]
			if len(w.queue) == 0 {
				w.queue = nil // release the backing array
			}
		}
		w.mu.Unlock()
		if err != nil {
			w.opts.Logger.Warn("cannot persist records; they stay queued and will be retried", "records", n, "error", err)
			return err
		}
	}
}
