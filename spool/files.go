package spool

// The spool's files: segments, frames, the checkpoint.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/llmusage/llmusage/internal/fsutil"
	"github.com/llmusage/llmusage/record"
)

func (s *Spool) reader(seg uint64) (*os.File, error) {
	if s.rFile != nil && s.rFileSeg == seg {
		return s.rFile, nil
	}
	if s.rFile != nil {
		s.rFile.Close()
		s.rFile = nil
	}
	f, err := os.Open(s.path(seg))
	if err != nil {
		return nil, fmt.Errorf("cannot read the spool: %w", err)
	}
	s.rFile, s.rFileSeg = f, seg
	return f, nil
}

// fileSize is the size of path, 0 if it does not exist. Any other error
// is returned: taking it for an empty file would skip, then delete, a
// segment that holds records.
func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("cannot read the spool: %w", err)
	}
	return fi.Size(), nil
}

// keepTail copies what follows off in segment seg, if anything, to a file
// beside it before Open truncates it, and says so.
func (s *Spool) keepTail(seg uint64, off int64) error {
	size, err := fileSize(s.path(seg))
	if err != nil || size <= off {
		return err
	}
	f, err := os.Open(s.path(seg))
	if err != nil {
		return fmt.Errorf("cannot read the spool: %w", err)
	}
	defer f.Close()
	tail := make([]byte, size-off)
	if _, err := f.ReadAt(tail, off); err != nil {
		return fmt.Errorf("cannot read the spool: %w", err)
	}
	// Durable before the segment is truncated: a crash in between must
	// not keep the truncation and lose the copy.
	kept := fmt.Sprintf("%s.tail-%d", s.path(seg), time.Now().UnixNano())
	if err := writeSynced(kept, tail); err != nil {
		return fmt.Errorf("cannot keep the spool's torn tail: %w", err)
	}
	if err := fsutil.SyncDir(s.dir); err != nil {
		return fmt.Errorf("cannot keep the spool's torn tail: %w", err)
	}
	s.logger.Warn("dropped the spool's last, unacknowledged bytes (a record torn by a crash, or damage); kept them aside",
		"segment", s.path(seg), "offset", off, "bytes", len(tail), "kept_in", kept)
	return nil
}

// scan counts the valid frames of a segment from an offset and returns
// where they end.
func (s *Spool) scan(seg uint64, from int64) (n int, end int64, err error) {
	f, err := os.Open(s.path(seg))
	if os.IsNotExist(err) {
		return 0, from, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("cannot read the spool: %w", err)
	}
	defer f.Close()
	end = from
	for {
		_, size, err := readFrame(f, end)
		if errors.Is(err, errCorrupt) {
			return n, end, nil
		}
		if err != nil {
			return 0, 0, err
		}
		n++
		end += size
	}
}

func readFrame(f *os.File, off int64) (record.Record, int64, error) {
	var h [frameHeader]byte
	if _, err := f.ReadAt(h[:], off); err != nil {
		return record.Record{}, 0, shortRead(err)
	}
	size := binary.LittleEndian.Uint32(h[:])
	if size == 0 || size > MaxRecordBytes {
		return record.Record{}, 0, errCorrupt
	}
	payload := make([]byte, size)
	if _, err := f.ReadAt(payload, off+frameHeader); err != nil {
		return record.Record{}, 0, shortRead(err)
	}
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(h[4:]) {
		return record.Record{}, 0, errCorrupt
	}
	r, err := decodePayload(payload)
	return r, frameHeader + int64(size), err
}

func (s *Spool) path(seg uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d.seg", seg))
}

func (s *Spool) segments() ([]uint64, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("cannot list the spool: %w", err)
	}
	var segs []uint64
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".seg"); ok {
			if n, err := strconv.ParseUint(name, 10, 64); err == nil {
				segs = append(segs, n)
			}
		}
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i] < segs[j] })
	return segs, nil
}

const checkpointFile = "checkpoint"

func (s *Spool) readCheckpoint() (uint64, int64, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, checkpointFile))
	if os.IsNotExist(err) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("cannot read the spool checkpoint: %w", err)
	}
	var seg uint64
	var off int64
	if _, err := fmt.Sscanf(string(b), "%d %d", &seg, &off); err != nil {
		// Torn by a crash (it is not fsynced): replay from the oldest
		// segment; the store skips what it already has.
		return 0, 0, nil
	}
	return seg, off, nil
}

// writeCheckpoint replaces the checkpoint with a rename, without fsync:
// a checkpoint lost in a crash only makes the next start replay records
// the store already has, which request_id makes harmless, so it need not
// cost two fsyncs per stored batch. The record data itself is always
// fsynced before it is acknowledged.
func (s *Spool) writeCheckpoint(seg uint64, off int64) error {
	tmp := filepath.Join(s.dir, checkpointFile+".tmp")
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d\n", seg, off), 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.dir, checkpointFile))
}

func newBatch() *commitBatch {
	return &commitBatch{done: make(chan struct{}), lead: make(chan struct{}, 1)}
}

// shortRead maps a read that ended early to errCorrupt (a frame cut
// short) and passes any other error on: a disk that fails to read is not
// a reason to drop what follows.
func shortRead(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errCorrupt
	}
	return fmt.Errorf("cannot read the spool: %w", err)
}

// writeSynced creates path with b and fsyncs it.
func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
