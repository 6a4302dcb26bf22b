// Package spool is a durable, ordered, bounded queue of call records on
// local disk. A record is acknowledged only once it is on disk (fsync);
// concurrent appends share one fsync (group commit). The consumer reads
// records in order and commits what it persisted; a checkpoint file
// survives restarts, so that after a crash the unpersisted records are
// replayed, and segments wholly persisted are deleted.
package spool

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/llmusage/llmusage/internal/fsutil"
	"github.com/llmusage/llmusage/record"
)

// ErrFull is returned by Enqueue when the records would take the spool
// past its size bound; none of them was taken.
var ErrFull = errors.New("cannot spool records: the spool is full")

// Options configure a Spool.
type Options struct {
	// MaxBytes bounds the bytes of unpersisted records (1 GiB when zero).
	MaxBytes int64
	// SegmentBytes is the size past which a new segment file is started
	// (16 MiB when zero); persisted segments are deleted whole.
	SegmentBytes int64
	// Logger reports damage found in the segments; slog.Default() when nil.
	Logger *slog.Logger
}

// Spool is safe for concurrent Enqueue; Peek and Commit belong to one consumer.
type Spool struct {
	dir          string
	maxBytes     int64
	segmentBytes int64
	logger       *slog.Logger

	mu sync.Mutex
	// seg and off locate the end of the durable data; file is that
	// segment, open for appending.
	seg  uint64
	off  int64
	file *os.File
	// batch collects the frames of appends waiting for the next fsync.
	batch *commitBatch
	// spare is the buffer of the last batch written, for the next one.
	spare []byte
	// flushing tells whether an appender is writing a batch (the leader).
	flushing bool
	// appendErr is the last write or fsync failure, cleared by a success.
	appendErr error
	// bytes and records count what is spooled and not yet committed,
	// including the batch being written.
	bytes, records int64
	// full is set when an append was refused for lack of room, until a
	// commit frees some: the spool cannot take records meanwhile.
	full bool

	// The consumer's side, guarded by mu too.
	// rSeg and rOff locate the first uncommitted record (the checkpoint).
	rSeg uint64
	rOff int64
	// peeked are the records handed out by Peek and not yet committed,
	// ending at peekSeg/peekOff and spanning peekBytes.
	peeked    []record.Record
	peekSeg   uint64
	peekOff   int64
	peekBytes int64
	rFile     *os.File
	rFileSeg  uint64
	// rBuf buffers the consumer's reads; only Peek uses it.
	rBuf             *bufio.Reader
	checkpointFailed error
	// damaged holds the finished segments with a frame that did not
	// check out: what follows it cannot be read, so Commit keeps such a
	// segment aside (.corrupt) rather than delete it.
	damaged map[uint64]bool
	// lock holds the spool directory's lock (lockDir) until Close.
	lock *os.File
}

type commitBatch struct {
	buf     []byte
	records int
	// done is closed once the batch is written, or failed with err.
	done chan struct{}
	err  error
	// lead promotes one of the batch's appenders to write it.
	lead chan struct{}
}

// Open opens (or creates) the spool in dir, recovering from a crash: a
// record cut short at the end of the last segment is dropped (it was never
// acknowledged), and everything after the checkpoint will be replayed.
func Open(dir string, opts Options) (_ *Spool, err error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 1 << 30
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = 16 << 20
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("cannot create the spool directory: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
	s := &Spool{dir: dir, maxBytes: opts.MaxBytes, segmentBytes: opts.SegmentBytes, logger: opts.Logger,
		batch: newBatch(), damaged: map[uint64]bool{}, lock: lock}
	segs, err := s.segments()
	if err != nil {
		return nil, err
	}
	s.rSeg, s.rOff, err = s.readCheckpoint()
	if err != nil {
		return nil, err
	}
	var live []uint64
	for _, seg := range segs {
		if seg < s.rSeg {
			_ = os.Remove(s.path(seg)) // persisted; a crash came before its deletion
			continue
		}
		live = append(live, seg)
	}
	switch {
	case len(live) == 0:
		// Nothing left to replay: start a fresh segment after the checkpoint.
		s.rSeg, s.rOff = s.rSeg+1, 0
		live = []uint64{s.rSeg}
	case live[0] != s.rSeg:
		s.rSeg, s.rOff = live[0], 0
	}
	size, err := fileSize(s.path(s.rSeg))
	if err != nil {
		return nil, err
	}
	s.rOff = min(s.rOff, size)
	for i, seg := range live {
		from := int64(0)
		if seg == s.rSeg {
			from = s.rOff
		}
		n, end, err := s.scan(seg, from)
		if err != nil {
			return nil, err
		}
		s.records += int64(n)
		s.bytes += end - from
		s.seg, s.off = seg, end
		size, err := fileSize(s.path(seg))
		if err != nil {
			return nil, err
		}
		if end < size && i < len(live)-1 {
			// Counted, as Peek will subtract them when it skips them.
			s.bytes += size - end
			s.damaged[seg] = true
			s.logger.Error("a spool segment is damaged: the records after the damage cannot be read, and the segment will be kept aside once the records before it are stored",
				"segment", s.path(seg), "offset", end, "bytes_unreadable", size-end)
		}
	}
	// The last segment's tail past the last whole frame was never fsynced,
	// so never acknowledged: a record torn by a crash. It is dropped, but
	// kept in a file of its own first, since damage can look the same.
	if err := s.keepTail(s.seg, s.off); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(s.path(s.seg), os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("cannot open the spool segment: %w", err)
	}
	if err := f.Truncate(s.off); err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot truncate the spool segment: %w", err)
	}
	if _, err := f.Seek(s.off, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	s.file = f
	return s, fsutil.SyncDir(dir)
}

// MaxRecordBytes bounds one record's frame: the readers refuse larger
// ones as corrupt, so Enqueue refuses them before acknowledging anything.
const MaxRecordBytes = 64 << 20

// ErrTooLarge is returned by Enqueue for a record over MaxRecordBytes;
// none of the records was taken.
var ErrTooLarge = errors.New("cannot spool a record over 64 MiB")

// Enqueue writes recs to disk and returns once they are durable, or
// refuses all of them with ErrFull or ErrTooLarge.
func (s *Spool) Enqueue(recs []record.Record) error {
	// Nothing to write: joining a batch being written would wait on a
	// leader that only writes batches with records in them.
	if len(recs) == 0 {
		return nil
	}
	// Sized once: grown by appends, the buffer for a request of 1,000
	// records was a fifth of the sidecar's garbage under batched ingest.
	size := 0
	for i := range recs {
		size += maxFrameSize(&recs[i])
	}
	frames := make([]byte, 0, size)
	for i := range recs {
		start := len(frames)
		frames = appendFrame(frames, &recs[i])
		if len(frames)-start-frameHeader > MaxRecordBytes {
			return ErrTooLarge
		}
	}
	s.mu.Lock()
	if s.bytes+int64(len(frames)) > s.maxBytes {
		s.full = true
		s.mu.Unlock()
		return fmt.Errorf("%w (%d of %d bytes, --spool-max-bytes): the store is behind", ErrFull, s.bytes, s.maxBytes)
	}
	b := s.batch
	b.buf = append(b.buf, frames...)
	b.records += len(recs)
	s.bytes += int64(len(frames))
	s.records += int64(len(recs))
	if s.flushing {
		s.mu.Unlock()
		select {
		case <-b.done:
			return b.err
		case <-b.lead:
			// The last leader handed over: this appender writes b.
			s.mu.Lock()
		}
	}
	// This appender leads: it writes the batch that is collecting
	// appends, b or the one b was promoted in, then hands over to an
	// appender of the next batch, if any, rather than write that one too:
	// its own answer should not wait for others' fsyncs.
	s.flushing = true
	cur := s.batch
	s.batch = newBatch()
	// Two buffers take turns: one collects appends while the other is
	// written, rather than a new one grown for every batch.
	s.batch.buf, s.spare = s.spare, nil
	s.mu.Unlock()
	err := s.write(cur.buf)
	s.mu.Lock()
	if int64(cap(cur.buf)) <= s.segmentBytes {
		s.spare = cur.buf[:0]
	}
	if err != nil {
		s.bytes -= int64(len(cur.buf))
		s.records -= int64(cur.records)
		s.appendErr = err
		cur.err = fmt.Errorf("cannot spool records: %w", err)
	} else {
		s.appendErr = nil
		s.off += int64(len(cur.buf))
		if s.off >= s.segmentBytes {
			if rerr := s.rotate(); rerr != nil {
				s.appendErr = rerr
			}
		}
	}
	close(cur.done)
	if s.batch.records > 0 {
		s.batch.lead <- struct{}{}
	} else {
		s.flushing = false
	}
	s.mu.Unlock()
	return cur.err
}

// write appends buf to the current segment and fsyncs it. It runs
// outside the lock; only the leader calls it.
func (s *Spool) write(buf []byte) error {
	if _, err := s.file.Write(buf); err != nil {
		// Leave no partial frame behind for the next batch to follow.
		_ = s.file.Truncate(s.off)
		_, _ = s.file.Seek(s.off, io.SeekStart)
		return err
	}
	if err := s.file.Sync(); err != nil {
		_ = s.file.Truncate(s.off)
		_, _ = s.file.Seek(s.off, io.SeekStart)
		return err
	}
	return nil
}

// rotate starts the next segment. The lock is held.
func (s *Spool) rotate() error {
	f, err := os.OpenFile(s.path(s.seg+1), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if err := fsutil.SyncDir(s.dir); err != nil {
		f.Close()
		return err
	}
	s.file.Close()
	s.file, s.seg, s.off = f, s.seg+1, 0
	return nil
}

// Peek returns up to limit of the oldest uncommitted records, the same
// ones again until Commit.
func (s *Spool) Peek(limit int) ([]record.Record, error) {
	// Only the consumer calls Peek and Commit, so the read position is
	// its own; the lock is held just to read the shared state, and the
	// disk is read without it, so that appends never wait for a read.
	s.mu.Lock()
	if len(s.peeked) > 0 {
		defer s.mu.Unlock()
		return s.peeked, nil
	}
	seg, off := s.rSeg, s.rOff
	endSeg, endOff := s.seg, s.off
	out := make([]record.Record, 0, max(0, min(int64(limit), s.records)))
	s.mu.Unlock()

	var size int64
	for len(out) < limit && (seg < endSeg || off < endOff) {
		end := endOff
		if seg < endSeg {
			var err error
			if end, err = fileSize(s.path(seg)); err != nil {
				return nil, err
			}
		}
		if off >= end {
			seg, off = seg+1, 0
			continue
		}
		var n int64
		var err error
		out, n, err = s.readSegment(out, seg, off, end, limit)
		off += n
		size += n
		if err != nil {
			if seg == endSeg || !errors.Is(err, errCorrupt) {
				return nil, fmt.Errorf("cannot read the spool: %w", err)
			}
			// A damaged frame in a finished segment: skip the rest of it
			// rather than block the spool forever; Commit keeps the
			// segment aside.
			s.logger.Error("a spool segment is damaged: skipping the records after the damage; the segment will be kept aside",
				"segment", s.path(seg), "offset", off, "bytes_unreadable", end-off)
			s.mu.Lock()
			s.damaged[seg] = true
			s.mu.Unlock()
			size += end - off
			seg, off = seg+1, 0
		}
	}
	s.mu.Lock()
	s.peeked, s.peekSeg, s.peekOff, s.peekBytes = out, seg, off, size
	if len(out) == 0 && (seg != s.rSeg || off != s.rOff) {
		// Only spent or damaged segments were passed, and no Commit
		// follows an empty Peek: move past them now, or every Peek would
		// pass (and log) them again.
		s.commitLocked(0)
	}
	s.mu.Unlock()
	return out, nil
}

// Scan calls fn with every uncommitted record, oldest first, without
// consuming any, as a sidecar does at start to learn what its spool still
// holds. Like Peek it belongs to the consumer, and must not run between
// a Peek and its Commit. fn must not keep the record's Metadata.
func (s *Spool) Scan(fn func(r *record.Record)) error {
	s.mu.Lock()
	seg, off := s.rSeg, s.rOff
	endSeg, endOff := s.seg, s.off
	s.mu.Unlock()
	var batch []record.Record
	for seg < endSeg || off < endOff {
		end := endOff
		if seg < endSeg {
			var err error
			if end, err = fileSize(s.path(seg)); err != nil {
				return err
			}
		}
		if off >= end {
			seg, off = seg+1, 0
			continue
		}
		var n int64
		var err error
		batch, n, err = s.readSegment(batch[:0], seg, off, end, 1024)
		for i := range batch {
			fn(&batch[i])
		}
		off += n
		if err != nil {
			if seg == endSeg || !errors.Is(err, errCorrupt) {
				return fmt.Errorf("cannot read the spool: %w", err)
			}
			seg, off = seg+1, 0 // Peek reports the damage
		}
	}
	return nil
}

// readSegment appends to out, until it holds limit records, the frames of
// a segment between off and end, reading sequentially through a buffer
// (one read per megabyte, not two per record). It returns out and the
// bytes the records took.
func (s *Spool) readSegment(out []record.Record, seg uint64, off, end int64, limit int) ([]record.Record, int64, error) {
	f, err := s.reader(seg)
	if err != nil {
		return out, 0, err
	}
	// The buffer is the consumer's and kept: a fresh megabyte per batch
	// was most of what reading the spool allocated.
	if s.rBuf == nil {
		s.rBuf = bufio.NewReaderSize(nil, 1<<20)
	}
	r := s.rBuf
	r.Reset(io.NewSectionReader(f, off, end-off))
	var read int64
	var h [frameHeader]byte
	var payload []byte
	for len(out) < limit && off+read < end {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return out, read, shortRead(err)
		}
		size := binary.LittleEndian.Uint32(h[:])
		if size == 0 || size > MaxRecordBytes {
			return out, read, errCorrupt
		}
		if cap(payload) < int(size) {
			payload = make([]byte, size)
		}
		payload = payload[:size]
		if _, err := io.ReadFull(r, payload); err != nil {
			return out, read, shortRead(err)
		}
		if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(h[4:]) {
			return out, read, errCorrupt
		}
		rec, err := decodePayload(payload)
		if err != nil {
			return out, read, err
		}
		out = append(out, rec)
		read += frameHeader + int64(size)
	}
	return out, read, nil
}

// Commit marks the records of the last Peek as persisted: the checkpoint
// moves past them, and wholly persisted segments are deleted.
func (s *Spool) Commit(n int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n != len(s.peeked) {
		return fmt.Errorf("cannot commit %d records: %d were peeked", n, len(s.peeked))
	}
	if n == 0 {
		return nil
	}
	s.commitLocked(n)
	return nil
}

// commitLocked moves the checkpoint to the end of the last Peek, which
// returned n records; s.mu is held.
func (s *Spool) commitLocked(n int) {
	if err := s.writeCheckpoint(s.peekSeg, s.peekOff); err != nil {
		// The records are persisted; without a checkpoint they will be
		// replayed after a restart, and request_id keeps that harmless.
		s.checkpointFailed = err
	}
	for seg := s.rSeg; seg < s.peekSeg; seg++ {
		if s.rFile != nil && s.rFileSeg == seg {
			s.rFile.Close()
			s.rFile = nil
		}
		if s.damaged[seg] {
			_ = os.Rename(s.path(seg), s.path(seg)+".corrupt")
			delete(s.damaged, seg)
			continue
		}
		_ = os.Remove(s.path(seg))
	}
	s.rSeg, s.rOff = s.peekSeg, s.peekOff
	s.bytes -= s.peekBytes
	s.records -= int64(n)
	s.full = false
	s.peeked, s.peekBytes = nil, 0
}

// Len returns the number of uncommitted records.
func (s *Spool) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.records)
}

// Bytes returns the bytes of uncommitted records.
func (s *Spool) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes
}

// MaxBytes returns the bound on uncommitted bytes.
func (s *Spool) MaxBytes() int64 { return s.maxBytes }

// Err tells why records cannot be spooled now (disk full, unwritable,
// or the size bound reached), or nil.
func (s *Spool) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.appendErr != nil {
		return fmt.Errorf("cannot write the spool: %w", s.appendErr)
	}
	if s.full {
		return fmt.Errorf("%w (%d of %d bytes, --spool-max-bytes): the store is behind", ErrFull, s.bytes, s.maxBytes)
	}
	return nil
}

// Close closes the files; uncommitted records stay for the next Open.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rFile != nil {
		s.rFile.Close()
	}
	err := s.file.Close()
	s.lock.Close()
	return err
}
