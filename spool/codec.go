package spool

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"time"

	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/usd"
)

// A frame is one record on disk: a little-endian uint32 payload length,
// the CRC-32C of the payload, then the payload. A frame cut short by a
// crash, or whose checksum fails, ends the readable part of a segment.
const frameHeader = 8

// codecVersion leads every payload, so that the format can change.
// Version 2 added the cache write tokens and the cost after the metadata,
// version 3 the team_id after them; frames of versions 1 and 2, spooled
// by an older sidecar, still decode.
const (
	codecVersion   = 3
	codecVersionV1 = 1
	codecVersionV2 = 2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var errCorrupt = errors.New("corrupt spool frame")

// appendFrame encodes r as a frame at the end of dst. The metadata is kept
// byte for byte (a JSON re-encoding would compact it).
// maxFrameSize bounds the bytes appendFrame adds for r, so that a buffer
// for many records can be sized once.
func maxFrameSize(r *record.Record) int {
	const fixed = frameHeader + 1 + 6*binary.MaxVarintLen64 + 7*binary.MaxVarintLen64 + 1 + binary.MaxVarintLen64 + 3*binary.MaxVarintLen64
	return fixed + len(r.RequestID) + len(r.UserID) + len(r.TeamID) + len(r.Provider) + len(r.Model) + len(r.Status) + len(r.ErrorType) + len(r.Metadata)
}

func appendFrame(dst []byte, r *record.Record) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, frameHeader)...)
	dst = append(dst, codecVersion)
	for _, s := range []string{r.RequestID, r.UserID, r.Provider, r.Model, r.Status, r.ErrorType} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	for _, n := range []int64{r.PromptTokens, r.CompletionTokens, r.TotalTokens, r.CachedTokens, r.ReasoningTokens, int64(r.Latency), r.Timestamp.UnixNano()} {
		dst = binary.AppendVarint(dst, n)
	}
	flags := byte(0)
	if r.HasLatency {
		flags |= 1
	}
	if r.Metadata != nil {
		flags |= 2
	}
	if r.HasCost {
		flags |= 4
	}
	dst = append(dst, flags)
	dst = binary.AppendUvarint(dst, uint64(len(r.Metadata)))
	dst = append(dst, r.Metadata...)
	dst = binary.AppendVarint(dst, r.CacheWriteTokens)
	dst = binary.AppendVarint(dst, int64(r.Cost))
	dst = binary.AppendUvarint(dst, uint64(len(r.TeamID)))
	dst = append(dst, r.TeamID...)
	payload := dst[start+frameHeader:]
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(payload, castagnoli))
	return dst
}

// decodePayload decodes a frame's payload, already checksummed.
func decodePayload(p []byte) (record.Record, error) {
	var r record.Record
	if len(p) == 0 || (p[0] != codecVersion && p[0] != codecVersionV1 && p[0] != codecVersionV2) {
		return r, errCorrupt
	}
	version := p[0]
	p = p[1:]
	str := func() string {
		n, k := binary.Uvarint(p)
		if k <= 0 || uint64(len(p)-k) < n {
			p = nil
			return ""
		}
		s := string(p[k : k+int(n)])
		p = p[k+int(n):]
		return s
	}
	num := func() int64 {
		n, k := binary.Varint(p)
		if k <= 0 {
			p = nil
			return 0
		}
		p = p[k:]
		return n
	}
	r.RequestID, r.UserID, r.Provider, r.Model, r.Status, r.ErrorType = str(), str(), str(), str(), str(), str()
	r.PromptTokens, r.CompletionTokens, r.TotalTokens, r.CachedTokens, r.ReasoningTokens = num(), num(), num(), num(), num()
	r.Latency = time.Duration(num())
	r.Timestamp = time.Unix(0, num()).UTC()
	if len(p) == 0 {
		return r, errCorrupt
	}
	flags := p[0]
	p = p[1:]
	r.HasLatency = flags&1 != 0
	meta := str()
	if p == nil {
		return r, errCorrupt
	}
	if flags&2 != 0 {
		r.Metadata = []byte(meta)
	}
	if version == codecVersionV1 {
		return r, nil
	}
	r.CacheWriteTokens = num()
	r.Cost, r.HasCost = usd.Amount(num()), flags&4 != 0
	if p == nil {
		return r, errCorrupt
	}
	if version == codecVersionV2 {
		return r, nil
	}
	r.TeamID = str()
	if p == nil {
		return r, errCorrupt
	}
	return r, nil
}
