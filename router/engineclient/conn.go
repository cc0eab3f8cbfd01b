package engineclient

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Limits on what an engine may send before its body.
const (
	maxHeaderBytes = 64 << 10
	maxFields      = 64
	// inlineBody: bodies up to this size are copied behind the head and
	// sent in the same write; longer ones get a second write.
	inlineBody = 64 << 10
)

var (
	errHeaderTooLarge = errors.New("engine answer headers over 64 KiB")
	errMalformed      = errors.New("malformed HTTP answer from the engine")
	aLongTimeAgo      = time.Unix(1, 0)
)

// Request is one POST to an engine. It is meant to live inside the
// caller's per-request state, so building it allocates nothing.
type Request struct {
	Path   string
	Body   []byte
	fields [16][2]string
	n      int
}

// Set adds a header (up to 16; values with CR, LF or NUL are dropped: they
// would split the request).
func (r *Request) Set(name, value string) {
	if r.n == len(r.fields) || !validValue(value) {
		return
	}
	r.fields[r.n] = [2]string{name, value}
	r.n++
}

// Reset empties the request for reuse.
func (r *Request) Reset() { *r = Request{} }

func validValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c == '\r' || c == '\n' || c == 0 {
			return false
		}
	}
	return true
}

// conn is one connection to an engine with the buffers it reuses for
// every request on it.
type conn struct {
	c       *Client
	ep      Endpoint
	nc      net.Conn
	br      *bufio.Reader // the raw socket
	wbuf    []byte
	expires time.Time // pooled: unusable after this
	got     int       // bytes of the current answer read
	// afterChunked: the last answer on it was chunked (see
	// Client.closesAfterChunked).
	afterChunked bool
	resp         Response
	cache        [maxFields]headerCache
}

type headerCache struct{ raw, canon, val string }

func newConn(c *Client, ep Endpoint, nc net.Conn) *conn {
	cn := &conn{c: c, ep: ep, nc: nc}
	cn.br = bufio.NewReaderSize(countingReader{cn}, 4<<10)
	cn.resp.cn = cn
	cn.resp.Body = bufio.NewReaderSize(&cn.resp.body, 4<<10)
	cn.resp.body.cn = cn
	return cn
}

// countingReader counts the answer's bytes as they come off the socket:
// a reused connection is replayed only if nothing arrived.
type countingReader struct{ cn *conn }

func (r countingReader) Read(p []byte) (int, error) {
	n, err := r.cn.nc.Read(p)
	r.cn.got += n
	return n, err
}

// replayable: the engine closed a reused connection before answering.
func replayable(err error, got int) bool {
	if got > 0 {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

func (cn *conn) roundTrip(req *Request, deadline time.Time) (*Response, error) {
	cn.got = 0
	if err := cn.nc.SetDeadline(deadline); err != nil {
		return nil, err
	}
	b := append(cn.wbuf[:0], "POST "...)
	b = append(b, req.Path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, cn.ep.host...)
	for _, f := range req.fields[:req.n] {
		b = append(b, "\r\n"...)
		b = append(b, f[0]...)
		b = append(b, ": "...)
		b = append(b, f[1]...)
	}
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(req.Body)), 10)
	b = append(b, "\r\n\r\n"...)
	long := len(req.Body) > inlineBody
	if !long {
		b = append(b, req.Body...)
	}
	_, err := cn.nc.Write(b)
	if cap(b) <= 4*inlineBody { // keep the buffer unless a big body grew it
		cn.wbuf = b[:0]
	}
	if err == nil && long {
		_, err = cn.nc.Write(req.Body)
	}
	if err != nil {
		return nil, err
	}
	if err := cn.readHead(); err != nil {
		return nil, err
	}
	return &cn.resp, nil
}

// readHead reads the status line and headers of the final answer (1xx
// ones are skipped) and sets up the body's framing.
func (cn *conn) readHead() error {
	r := &cn.resp
	for {
		r.reset()
		line, err := cn.readLine()
		if err != nil {
			return err
		}
		major, status, ok := parseStatusLine(line)
		if !ok {
			return errMalformed
		}
		if err := cn.readFields(); err != nil {
			return err
		}
		if status >= 100 && status < 200 && status != 101 {
			continue
		}
		r.StatusCode = status
		return r.frame(major)
	}
}

// readLine returns one line without its CRLF, valid until the next read.
func (cn *conn) readLine() ([]byte, error) {
	line, err := cn.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return nil, errHeaderTooLarge
	}
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}

// parseStatusLine reads "HTTP/1.x NNN reason".
func parseStatusLine(l []byte) (major10 bool, status int, ok bool) {
	if len(l) < 12 || string(l[:7]) != "HTTP/1." || l[8] != ' ' || (len(l) > 12 && l[12] != ' ') {
		return false, 0, false
	}
	for _, c := range l[9:12] {
		if c < '0' || c > '9' {
			return false, 0, false
		}
		status = status*10 + int(c-'0')
	}
	return l[7] == '0', status, true
}

// readFields copies the header lines into the response's own buffer.
func (cn *conn) readFields() error {
	r := &cn.resp
	for {
		line, err := cn.readLine()
		if err != nil {
			return err
		}
		if len(line) == 0 {
			return nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return errMalformed // obsolete line folding
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(k) == 0 || r.n == maxFields {
			return errMalformed
		}
		if len(r.hdr)+len(line) > maxHeaderBytes {
			return errHeaderTooLarge
		}
		v = bytes.TrimSpace(v)
		start := len(r.hdr)
		r.hdr = append(r.hdr, k...)
		r.hdr = append(r.hdr, v...)
		r.fields[r.n] = field{start, start + len(k), start + len(k) + len(v)}
		r.n++
	}
}

// Call is one request's hold on its engine connection, for aborting it
// from another goroutine (the client left, the instance left the
// registry). Keep it in the caller's per-request state; Reset between
// attempts.
type Call struct {
	mu    sync.Mutex
	cn    *conn
	cause error
}

// Abort records cause (the first one wins) and fails the call's current
// and later reads and writes at once.
func (c *Call) Abort(cause error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cause == nil {
		c.cause = cause
	}
	if c.cn != nil {
		_ = c.cn.nc.SetDeadline(aLongTimeAgo)
	}
}

// Cause is what Abort was given, or nil.
func (c *Call) Cause() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cause
}

// Reset readies the call for another attempt.
func (c *Call) Reset() {
	c.mu.Lock()
	c.cn, c.cause = nil, nil
	c.mu.Unlock()
}

func (c *Call) attach(cn *conn) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cause != nil {
		return c.cause
	}
	c.cn = cn
	cn.resp.call = c
	return nil
}

func (c *Call) detach() {
	c.mu.Lock()
	c.cn = nil
	c.mu.Unlock()
}

// setReadDeadline moves the read deadline unless the call was aborted
// (which must keep its deadline in the past).
func (c *Call) setReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cause != nil || c.cn == nil {
		return c.cause
	}
	return c.cn.nc.SetReadDeadline(t)
}
