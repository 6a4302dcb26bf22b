package collector

import (
	"crypto/rand"
	"encoding/hex"
	"time"
)

// newRequestID returns a UUID version 7 (RFC 9562): the time in
// milliseconds, then 74 random bits. A record without a request_id can
// still be stored exactly once, and since these IDs grow with time, the
// stores' unique index on request_id takes them at its right edge, where
// random (version 4) IDs dirtied a random index page with every insert.
func newRequestID(now time.Time) string {
	var b [16]byte
	_, _ = rand.Read(b[6:])
	ms := uint64(now.UnixMilli())
	for i := range 6 {
		b[i] = byte(ms >> (40 - 8*i))
	}
	b[6] = b[6]&0x0f | 0x70
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}
