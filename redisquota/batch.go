package redisquota

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// batcher sends the bucket script's calls that arrive while
// maxInFlight are in flight together, as one call of the script (see
// bucketSource): a call goes at once while fewer are in flight; those
// that arrive meanwhile queue, and go together when one returns. Redis then reads, dispatches and answers
// one command for the batch, and reads the clock and the epoch once,
// and the sidecar encodes and sends one: the cost a call that does not
// depend on its buckets is shared by the batch. Each call keeps its own
// deadline, epoch and request_id, and gets its own answer; the script
// judges them in the order they queued, atomically. A Redis Cluster is
// not batched: a script reaches the keys of one slot only, and calls of
// different users are in different slots.
type batcher struct {
	// mu guards inFlight and queue.
	mu sync.Mutex
	// inFlight counts the calls of the script in flight.
	inFlight int
	// queue holds the calls waiting for it to return, in order.
	queue []*scriptCall
}

// maxInFlight is how many calls of the script go at once before the
// next queue: more than one, so that a check at low load never waits
// for another's round trip (with one, two connections' checks took
// turns, and their latency doubled); few, so that under load the calls
// batch. See docs/benchmarks.md.
const maxInFlight = 2

// maxBatch bounds the calls of one batch, so that one script call does
// not hold Redis long, nor a batch's reply grow without bound.
const maxBatch = 64

// scriptCall is one call of the bucket script and, once done, its answer.
type scriptCall struct {
	// ctx bounds the caller's wait; a call whose ctx ended before it was
	// sent is not sent.
	ctx context.Context
	// keys and args are the call's (scriptArgs), n its buckets.
	keys []string
	args []any
	n    int
	// done is closed when the answer is in, for a call that queued.
	done chan struct{}
	// res is {allowed, now, level...}, or err why not.
	res []float64
	err error
	// sent and answered bound the script's reading of the server's
	// clock: when the batch was sent and when its answer came.
	sent, answered time.Time
}

// callScript runs c, alone or in a batch, and fills its answer; it
// returns early with the ctx's error when c.ctx ends first.
func (s *Store) callScript(c *scriptCall) error {
	if s.cluster {
		s.sendBatch([]*scriptCall{c})
		return nil
	}
	b := &s.batch
	b.mu.Lock()
	if b.inFlight >= maxInFlight {
		c.done = make(chan struct{})
		b.queue = append(b.queue, c)
		b.mu.Unlock()
		select {
		case <-c.done:
			return nil
		case <-c.ctx.Done():
			select {
			case <-c.done:
				// Answered as the time ran out: the answer counts.
				return nil
			default:
			}
			// The batch may still carry it: its deadline in Redis makes it
			// change nothing once this caller has given up.
			return c.ctx.Err()
		}
	}
	b.inFlight++
	b.mu.Unlock()
	s.sendBatch([]*scriptCall{c})
	if next := b.next(); next != nil {
		go s.drain(next)
	}
	return nil
}

// next takes the next batch from the queue for a sender that is done
// with its call, or, when it is empty, counts that sender out and
// returns nil.
func (b *batcher) next() []*scriptCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	batch := b.queue
	switch {
	case len(batch) == 0:
		b.inFlight--
		return nil
	case len(batch) > maxBatch:
		batch = batch[:maxBatch:maxBatch]
		b.queue = b.queue[maxBatch:]
	default:
		b.queue = nil
	}
	return batch
}

// drain sends batches until the queue is empty.
func (s *Store) drain(batch []*scriptCall) {
	for ; batch != nil; batch = s.batch.next() {
		s.sendBatch(batch)
	}
}

// sendBatch runs calls as one call of the script and hands each its
// answer. A lone call runs under its own ctx; a batch under the timeout,
// from now.
func (s *Store) sendBatch(calls []*scriptCall) {
	live := calls[:0:0]
	for _, c := range calls {
		if err := c.ctx.Err(); err == nil {
			live = append(live, c)
		} else {
			c.err = err
			if c.done != nil {
				close(c.done)
			}
		}
	}
	if len(live) == 0 {
		return
	}
	ctx := live[0].ctx
	if len(live) > 1 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), s.opts.Timeout)
		defer cancel()
	}
	nkeys, nargs := 0, 0
	for _, c := range live {
		nkeys += len(c.keys)
		nargs += len(c.args)
	}
	cmdArgs := make([]any, 3, 3+nkeys+nargs)
	cmdArgs[2] = nkeys
	for _, c := range live {
		for _, k := range c.keys {
			cmdArgs = append(cmdArgs, k)
		}
	}
	for _, c := range live {
		cmdArgs = append(cmdArgs, c.args...)
	}
	sent := time.Now()
	cmd := runBucketScript(ctx, s.opts.Client, cmdArgs)
	answered := time.Now()
	vals, err := cmd.Slice()
	at := 0
	for _, c := range live {
		c.sent, c.answered = sent, answered
		switch {
		case err != nil:
			c.err = err
		case len(live) == 1:
			c.res, c.err = parseValues(vals, c.n)
		case at+c.n+2 > len(vals):
			c.err = fmt.Errorf("cannot read the bucket script's answer: %d values for the batch, want more", len(vals))
		default:
			part := vals[at : at+c.n+2]
			at += c.n + 2
			if code, ok := part[0].(int64); ok && code == -9 {
				msg, _ := part[1].(string)
				c.err = scriptError(msg)
				continue
			}
			c.res, c.err = parseValues(part, c.n)
		}
		if c.done != nil {
			close(c.done)
		}
	}
}

// scriptError is the error a call of a batch met in the script, an error
// answer of Redis as it would have been for the call alone.
type scriptError string

// Error implements error.
func (e scriptError) Error() string { return string(e) }

// RedisError implements redis.Error.
func (scriptError) RedisError() {}

var _ redis.Error = scriptError("")

// parseValues reads one call's answer: {allowed, now, level...}.
func parseValues(vals []any, n int) ([]float64, error) {
	if len(vals) != n+2 {
		return nil, fmt.Errorf("cannot read the bucket script's answer: %d values, want %d", len(vals), n+2)
	}
	out := make([]float64, n+2)
	if allowed, ok := vals[0].(int64); ok {
		out[0] = float64(allowed)
	}
	for i := 1; i <= n+1; i++ {
		str, ok := vals[i].(string)
		if !ok {
			return nil, fmt.Errorf("cannot read the bucket script's level %d: %T", i, vals[i])
		}
		var err error
		if out[i], err = strconv.ParseFloat(str, 64); err != nil {
			return nil, fmt.Errorf("cannot read the bucket script's level %d: %w", i, err)
		}
	}
	return out, nil
}
