package proxy

import (
	"io"
	"net/http"
	"time"
)

// upstreamWait adds up the time one call waits on its upstream. Only the
// handler's goroutine touches it: httputil.ReverseProxy calls the
// transport and reads the answer's body in the goroutine it runs in.
type upstreamWait struct {
	// d is the wait so far.
	d time.Duration
}

// timedTransport times the round trip to the upstream (connection,
// request sent, answer's headers) and every read of the answer's body:
// the time the proxy waits on the upstream, which its added latency
// leaves out. Reading the body includes its decompression when the
// transport asked for gzip, a small part of the wait.
type timedTransport struct {
	// next sends the call.
	next http.RoundTripper
	// wait is the call's wait, added to.
	wait *upstreamWait
}

func (t *timedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(r)
	t.wait.d += time.Since(start)
	// A 101's body is the upgraded connection, which ReverseProxy also
	// writes to: left as it is.
	if resp != nil && resp.Body != nil && resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body = &timedBody{ReadCloser: resp.Body, wait: t.wait}
	}
	return resp, err
}

// timedBody adds the time of each read to wait.
type timedBody struct {
	io.ReadCloser
	// wait is the call's wait, added to.
	wait *upstreamWait
}

func (b *timedBody) Read(p []byte) (int, error) {
	start := time.Now()
	n, err := b.ReadCloser.Read(p)
	b.wait.d += time.Since(start)
	return n, err
}
