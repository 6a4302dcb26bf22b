package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// requestTimeout bounds one request, as a client's timeout would.
const requestTimeout = 30 * time.Second

// endpoint is where the requests go.
type endpoint struct {
	// network and address are what to dial: tcp and host:port, or unix
	// and a socket path.
	network, address string
	// host is the Host header; prefix is the target URL's path, which the
	// API paths are appended to.
	host, prefix string
}

func parseTarget(target string) (endpoint, error) {
	if path, ok := strings.CutPrefix(target, "unix:"); ok {
		return endpoint{network: "unix", address: path, host: "llmusage"}, nil
	}
	u, err := url.Parse(target)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return endpoint{}, fmt.Errorf("cannot use --target %q: want http://host:port or unix:/path", target)
	}
	return endpoint{network: "tcp", address: u.Host, host: u.Host, prefix: strings.TrimRight(u.Path, "/")}, nil
}

// conn is one keep-alive HTTP/1.1 connection, written out by hand. The
// generator shares the machine with what it measures: net/http's client
// spent about as much CPU per request as the bare server it drove, which
// both took CPU from the server and queued requests inside the generator,
// counted as the server's latency. conn writes a request in one write and
// reads the answer through one buffer.
type conn struct {
	ep endpoint
	nc net.Conn
	r  *bufio.Reader
	// head and body are reused from request to request.
	head, body []byte
}

// do posts body to path and returns the status and the answer's body,
// valid until the next call. After an error the connection is closed;
// the next call dials again.
func (c *conn) do(ctx context.Context, path, contentType, token string, body []byte) (int, []byte, error) {
	if c.nc == nil {
		d := net.Dialer{Timeout: requestTimeout}
		nc, err := d.DialContext(ctx, c.ep.network, c.ep.address)
		if err != nil {
			return 0, nil, err
		}
		c.nc = nc
		if c.r == nil {
			c.r = bufio.NewReaderSize(nc, 16<<10)
		} else {
			c.r.Reset(nc)
		}
	}
	deadline := time.Now().Add(requestTimeout)
	runEnd, bounded := ctx.Deadline()
	if bounded && runEnd.Before(deadline) {
		deadline = runEnd
	}
	_ = c.nc.SetDeadline(deadline)
	status, keep, err := c.roundTrip(path, contentType, token, body)
	if err != nil || !keep {
		c.nc.Close()
		c.nc = nil
	}
	if err != nil && bounded && deadline.Equal(runEnd) && errors.Is(err, os.ErrDeadlineExceeded) {
		// The run ended mid-request; ctx's own timer may not have fired yet.
		return 0, nil, context.DeadlineExceeded
	}
	return status, c.body, err
}

func (c *conn) roundTrip(path, contentType, token string, body []byte) (status int, keepAlive bool, err error) {
	h := append(c.head[:0], "POST "...)
	h = append(h, c.ep.prefix...)
	h = append(h, path...)
	h = append(h, " HTTP/1.1\r\nHost: "...)
	h = append(h, c.ep.host...)
	h = append(h, "\r\nContent-Type: "...)
	h = append(h, contentType...)
	h = append(h, "\r\nContent-Length: "...)
	h = strconv.AppendInt(h, int64(len(body)), 10)
	if token != "" {
		h = append(h, "\r\nAuthorization: Bearer "...)
		h = append(h, token...)
	}
	h = append(h, "\r\n\r\n"...)
	c.head = h
	// One write for head and body: small requests go out in one segment.
	bufs := net.Buffers{h, body}
	if _, err := bufs.WriteTo(c.nc); err != nil {
		return 0, false, err
	}
	return c.readResponse()
}

var errMalformed = errors.New("cannot parse the answer: malformed HTTP/1.1")

// readResponse reads the status line, the headers it needs and the body
// (Content-Length, chunked, or up to the end of the connection).
func (c *conn) readResponse() (status int, keepAlive bool, err error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, false, errMalformed
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, false, errMalformed
	}
	keepAlive = line[7] == '1' // HTTP/1.0 closes unless told otherwise
	length, chunked := -1, false
	for {
		line, err = c.r.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, false, errMalformed
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil || length < 0 {
				return 0, false, errMalformed
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			keepAlive = !bytes.EqualFold(value, []byte("close"))
		}
	}
	c.body = c.body[:0]
	switch {
	case chunked:
		err = c.readChunked()
	case length >= 0:
		c.body = append(c.body, make([]byte, length)...)
		_, err = io.ReadFull(c.r, c.body)
	default:
		c.body, err = readAllInto(c.r, c.body)
		keepAlive = false
	}
	return status, keepAlive && err == nil, err
}

func (c *conn) readChunked() error {
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return err
		}
		sizeHex, _, _ := bytes.Cut(bytes.TrimSpace(line), []byte(";"))
		size, err := strconv.ParseUint(string(sizeHex), 16, 31)
		if err != nil {
			return errMalformed
		}
		if size == 0 {
			for { // trailers, up to the blank line
				line, err = c.r.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(bytes.TrimRight(line, "\r\n")) == 0 {
					return nil
				}
			}
		}
		start := len(c.body)
		c.body = append(c.body, make([]byte, size)...)
		if _, err := io.ReadFull(c.r, c.body[start:]); err != nil {
			return err
		}
		if _, err := c.r.Discard(2); err != nil { // the chunk's CRLF
			return err
		}
	}
}

func readAllInto(r io.Reader, b []byte) ([]byte, error) {
	var buf bytes.Buffer
	buf.Write(b)
	_, err := buf.ReadFrom(r)
	return buf.Bytes(), err
}

func (c *conn) close() {
	if c.nc != nil {
		c.nc.Close()
		c.nc = nil
	}
}
