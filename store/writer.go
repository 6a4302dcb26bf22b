package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/llmusage/llmusage/record"
)

// Queue holds accepted records, in order, until the store has them. The
// durable spool is one; MemoryQueue is the opt-out that loses its records
// with the process.
type Queue interface {
	// Enqueue takes all of recs, or none with an error.
	Enqueue(recs []record.Record) error
	// Peek returns up to limit of the oldest records, the same ones until Commit.
	Peek(limit int) ([]record.Record, error)
	// Commit drops the n records of the last Peek: they are persisted.
	Commit(n int) error
	// Len returns the number of records waiting.
	Len() int
}

// WriterObserver is told about every flush, for metrics.
type WriterObserver interface {
	// ObserveFlush reports a batch of n records written in d, or failed with err.
	ObserveFlush(n int, d time.Duration, err error)
	// ObserveDeadLettered reports a record the store rejected, now in the dead letter.
	ObserveDeadLettered()
	// ObserveDuplicates reports n records not stored because the store
	// already had their request_id.
	ObserveDuplicates(n int)
}

// WriterOptions tune a Writer. Zero values take the defaults.
type WriterOptions struct {
	// BatchSize is the most records one transaction writes (5000), and the
	// queue length that triggers a flush before the interval is up.
	BatchSize int
	// FlushInterval is the longest a record waits while the store is
	// healthy (1s); the store is pinged as often while there is nothing to write.
	FlushInterval time.Duration
	// Observer receives flush outcomes; optional.
	Observer WriterObserver
	// Logger logs failed flushes; slog.Default() when nil.
	Logger *slog.Logger
	// DeadLetter takes the records the store rejects (ErrRejected). When
	// nil, a rejected batch is retried like any failed one.
	DeadLetter DeadLetter
	// Rand returns a number in [0, 1) for the retries' jitter;
	// math/rand/v2's Float64 when nil. Tests fix it.
	Rand func() float64
}

// maxRetryWait bounds the backoff after failures, and so how long a
// recovered database waits for the backlog to start draining.
const maxRetryWait = 5 * time.Second

// RetryWait is how long the writer waits after its nth failure in a row
// (n >= 1): the flush interval doubled n times, at most maxRetryWait,
// less a random part of up to half of it (r in [0, 1)). Without the
// jitter the sidecars of every pod, failing together when a shared
// database goes, would retry together for as long as it is gone, and
// when it comes back all start draining their spools in the same
// instant; with it their retries spread over half the wait.
func RetryWait(flushInterval time.Duration, n int, r float64) time.Duration {
	wait := flushInterval
	for range min(n, 30) {
		wait = min(2*wait, maxRetryWait)
	}
	wait = max(wait, flushInterval) // an interval over maxRetryWait stays
	return wait - time.Duration(r*float64(wait/2))
}

// Writer moves records from a Queue to the Store in batches, so that
// neither intake nor checks wait for the database. A batch that fails
// stays at the head of the queue and is retried with backoff: records
// leave the queue only once stored, or, when the store rejects them
// (ErrRejected), once the dead letter has them: the batch is halved until
// the records at fault are alone, and the others are stored.
type Writer struct {
	store Store
	queue Queue
	opts  WriterOptions

	mu sync.Mutex
	// storeErr is the error of the last write or ping, nil after a success.
	storeErr error

	// kick wakes Run when a batch is waiting.
	kick chan struct{}
	// deadLettered holds the request_ids of the batch at the head of the
	// queue already in the dead letter: when the batch fails later on
	// and is retried, they are not written there twice.
	deadLettered map[string]bool
}

// NewWriter returns a Writer from q to s; call Run to start it.
func NewWriter(s Store, q Queue, opts WriterOptions) *Writer {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 5000
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	return &Writer{store: s, queue: q, opts: opts, kick: make(chan struct{}, 1)}
}

// Enqueue hands recs to the queue (for the spool: returns once they are
// on disk) and wakes the writer when a batch is waiting.
func (w *Writer) Enqueue(recs []record.Record) error {
	if err := w.queue.Enqueue(recs); err != nil {
		return err
	}
	if w.queue.Len() >= w.opts.BatchSize {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// Len returns the number of records waiting.
func (w *Writer) Len() int { return w.queue.Len() }

// StoreErr tells why the store could not be written or reached last time,
// or nil.
func (w *Writer) StoreErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.storeErr
}

// Run flushes by size or interval until ctx ends.
func (w *Writer) Run(ctx context.Context) {
	timer := time.NewTimer(w.opts.FlushInterval)
	defer timer.Stop()
	failures := 0
	for {
		// While the store fails, a full batch waits for the backoff too:
		// during an outage every POST fills one, and would retry at once.
		kick := w.kick
		if failures > 0 {
			kick = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-kick:
		}
		n, err := w.flush(ctx)
		if err == nil && n == 0 {
			err = w.ping(ctx)
		}
		wait := w.opts.FlushInterval
		if err != nil {
			failures++
			wait = RetryWait(w.opts.FlushInterval, failures, w.opts.Rand())
		} else {
			failures = 0
		}
		timer.Reset(wait)
	}
}

// Flush writes every queued record, batch by batch, and stops at the
// first failure, which it returns; the failed batch stays queued.
func (w *Writer) Flush(ctx context.Context) error {
	_, err := w.flush(ctx)
	return err
}

func (w *Writer) flush(ctx context.Context) (int, error) {
	total := 0
	for {
		batch, err := w.queue.Peek(w.opts.BatchSize)
		if err != nil {
			return total, fmt.Errorf("cannot read the queue: %w", err)
		}
		if len(batch) == 0 {
			return total, nil
		}
		start := time.Now()
		stored, dead, err := w.insert(ctx, batch)
		if w.opts.Observer != nil {
			w.opts.Observer.ObserveFlush(len(batch)-dead, time.Since(start), err)
			if dup := len(batch) - dead - stored; err == nil && dup > 0 {
				w.opts.Observer.ObserveDuplicates(dup)
			}
		}
		w.setStoreErr(err)
		if err != nil {
			// A flush cut short by shutdown is not a database problem: the
			// final Flush takes over, and says so if it fails.
			if ctx.Err() == nil {
				w.opts.Logger.Warn("cannot persist records; they stay queued and will be retried", "records", len(batch), "queued", w.queue.Len(), "error", err)
			}
			return total, err
		}
		if err := w.queue.Commit(len(batch)); err != nil {
			return total, err
		}
		clear(w.deadLettered)
		total += len(batch)
	}
}

// insert stores recs, isolating by halves the records the store rejects
// and handing them to the dead letter; it returns how many rows were new
// and how many records went there. A batch of 5,000 with one such record
// costs about 26 inserts. Should it fail otherwise halfway, the whole
// batch is retried later: the store skips what it already has.
func (w *Writer) insert(ctx context.Context, recs []record.Record) (stored, dead int, err error) {
	stored, err = w.store.Insert(ctx, recs)
	if err == nil || !errors.Is(err, ErrRejected) || w.opts.DeadLetter == nil {
		return stored, 0, err
	}
	if len(recs) > 1 {
		half := len(recs) / 2
		stored1, dead1, err := w.insert(ctx, recs[:half])
		if err != nil {
			return 0, 0, err
		}
		stored2, dead2, err := w.insert(ctx, recs[half:])
		return stored1 + stored2, dead1 + dead2, err
	}
	if w.deadLettered[recs[0].RequestID] {
		return 0, 1, nil
	}
	if dlErr := w.opts.DeadLetter.Put(recs[0], err); dlErr != nil {
		return 0, 0, fmt.Errorf("%w; %w", err, dlErr)
	}
	if w.deadLettered == nil {
		w.deadLettered = map[string]bool{}
	}
	w.deadLettered[recs[0].RequestID] = true
	w.opts.Logger.Error("the store rejected a record; it is in the dead letter, to be posted again once the cause is mended",
		"request_id", recs[0].RequestID, "user_id", recs[0].UserID, "error", err)
	if w.opts.Observer != nil {
		w.opts.Observer.ObserveDeadLettered()
	}
	return 0, 1, nil
}

func (w *Writer) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := w.store.Ping(ctx)
	w.setStoreErr(err)
	return err
}

func (w *Writer) setStoreErr(err error) {
	w.mu.Lock()
	w.storeErr = err
	w.mu.Unlock()
}

// ErrQueueFull is returned by MemoryQueue.Enqueue when the records would
// not fit; none of them was taken.
var ErrQueueFull = errors.New("cannot queue records for persistence: the queue is full")

// MemoryQueue is a bounded in-memory Queue: records in it are lost if the
// process dies (--durability=memory).
type MemoryQueue struct {
	// max bounds the records held.
	max int

	mu      sync.Mutex
	records []record.Record
	// peeked counts the records handed out by the last Peek.
	peeked int
}

// NewMemoryQueue returns a queue of at most max records (100,000 when zero).
func NewMemoryQueue(max int) *MemoryQueue {
	if max <= 0 {
		max = 100_000
	}
	return &MemoryQueue{max: max}
}

// Enqueue takes all of recs, or none with ErrQueueFull.
func (q *MemoryQueue) Enqueue(recs []record.Record) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.records)+len(recs) > q.max {
		return fmt.Errorf("%w (%d records queued, --queue-max-records %d)", ErrQueueFull, len(q.records), q.max)
	}
	q.records = append(q.records, recs...)
	return nil
}

// Peek returns a copy of up to limit of the oldest records.
func (q *MemoryQueue) Peek(limit int) ([]record.Record, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.peeked = min(limit, len(q.records))
	return append([]record.Record(nil), q.records[:q.peeked]...), nil
}

// Commit drops the records of the last Peek.
func (q *MemoryQueue) Commit(n int) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if n != q.peeked {
		return fmt.Errorf("cannot commit %d records: %d were peeked", n, q.peeked)
	}
	q.records = q.records[n:]
	if len(q.records) == 0 {
		q.records = nil // release the backing array
	}
	q.peeked = 0
	return nil
}

// Len returns the number of records waiting.
func (q *MemoryQueue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.records)
}

// Err tells why records cannot be queued (the bound is reached), or nil.
func (q *MemoryQueue) Err() error {
	if q.Len() >= q.max {
		return fmt.Errorf("%w (--queue-max-records %d)", ErrQueueFull, q.max)
	}
	return nil
}
