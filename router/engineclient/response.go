package engineclient

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"time"
)

// Response is an engine's answer. It and its buffers belong to the
// connection: valid until Close, which pools the connection when the body
// was read to its end.
type Response struct {
	StatusCode int
	// Body is the answer's body, de-chunked and buffered.
	Body *bufio.Reader

	cn        *conn
	call      *Call
	hdr       []byte
	fields    [maxFields]field
	n         int
	body      bodyReader
	keepAlive time.Duration // the server's Keep-Alive timeout (0: none given)
	close     bool          // the connection ends with this answer
}

type field struct{ k0, v0, end int }

func (r *Response) reset() {
	r.StatusCode, r.hdr, r.n, r.keepAlive, r.close = 0, r.hdr[:0], 0, 0, false
	r.body = bodyReader{cn: r.cn}
}

func (r *Response) key(i int) []byte   { f := r.fields[i]; return r.hdr[f.k0:f.v0] }
func (r *Response) value(i int) []byte { f := r.fields[i]; return r.hdr[f.v0:f.end] }

// Header is the first value of the named header (any case), or nil.
func (r *Response) Header(name string) []byte {
	for i := 0; i < r.n; i++ {
		if asciiEqualFold(r.key(i), name) {
			return r.value(i)
		}
	}
	return nil
}

// frame reads the body's framing and the connection's fate from the
// headers (RFC 9112 §6.3).
func (r *Response) frame(http10 bool) error {
	r.close = http10
	length, chunked := int64(-1), false
	for i := 0; i < r.n; i++ {
		k, v := r.key(i), r.value(i)
		switch {
		case asciiEqualFold(k, "Content-Length"):
			n, ok := parseDecimal(v)
			if !ok || (length >= 0 && n != length) {
				return errMalformed
			}
			length = n
		case asciiEqualFold(k, "Transfer-Encoding"):
			chunked = asciiEqualFold(bytes.TrimSpace(lastToken(v)), "chunked")
			if !chunked {
				return errMalformed // another coding: not something engines send
			}
		case asciiEqualFold(k, "Connection"):
			for t, rest := nextToken(v); t != nil; t, rest = nextToken(rest) {
				switch {
				case asciiEqualFold(t, "close"):
					r.close = true
				case asciiEqualFold(t, "keep-alive") && http10:
					r.close = false
				}
			}
		case asciiEqualFold(k, "Keep-Alive"):
			r.keepAlive = keepAliveTimeout(v)
		}
	}
	switch {
	case r.StatusCode == http.StatusNoContent || r.StatusCode == http.StatusNotModified:
		r.body.left, r.body.mode = 0, modeLength
	case chunked:
		r.body.mode = modeChunked
	case length >= 0:
		r.body.left, r.body.mode = length, modeLength
	default:
		r.body.mode, r.close = modeClose, true
	}
	r.Body.Reset(&r.body)
	return nil
}

// nextToken splits a comma-separated list: the first non-empty element,
// trimmed, and the rest (nil, nil at the end).
func nextToken(v []byte) (tok, rest []byte) {
	for len(v) > 0 {
		var t []byte
		t, v, _ = bytes.Cut(v, []byte(","))
		if t = bytes.TrimSpace(t); len(t) > 0 {
			return t, v
		}
	}
	return nil, nil
}

// parseDecimal reads a non-negative decimal number of at most 18 digits.
func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func lastToken(v []byte) []byte {
	if i := bytes.LastIndexByte(v, ','); i >= 0 {
		return v[i+1:]
	}
	return v
}

// keepAliveTimeout reads "timeout=N" from a Keep-Alive header.
func keepAliveTimeout(v []byte) time.Duration {
	for p, rest := nextToken(v); p != nil; p, rest = nextToken(rest) {
		k, n, ok := bytes.Cut(p, []byte("="))
		if ok && asciiEqualFold(bytes.TrimSpace(k), "timeout") {
			if s, ok := parseDecimal(bytes.TrimSpace(n)); ok && s > 0 && s < 1<<20 {
				return time.Duration(s) * time.Second
			}
		}
	}
	return 0
}

// SetReadDeadline bounds the next reads of the body (zero: no limit).
func (r *Response) SetReadDeadline(t time.Time) error { return r.call.setReadDeadline(t) }

// DiscardBody reads and drops up to limit bytes of the body so the
// connection can be reused.
func (r *Response) DiscardBody(limit int64) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, limit))
}

// Close ends the answer: the connection goes back to the pool when its
// body was read to the end, nothing is left buffered and the call was not
// aborted; otherwise it is closed (which also tells the engine to stop).
func (r *Response) Close() {
	cn, call := r.cn, r.call
	call.detach()
	reusable := r.body.eof && !r.close && r.Body.Buffered() == 0 && cn.br.Buffered() == 0 && call.Cause() == nil
	if !reusable {
		_ = cn.nc.Close()
		return
	}
	idle := cn.c.cfg.IdleTimeout
	if ka := r.keepAlive; ka > 0 && ka-time.Second/2 < idle {
		idle = ka - time.Second/2
	}
	if idle <= 0 {
		_ = cn.nc.Close()
		return
	}
	cn.expires = time.Now().Add(idle)
	cn.afterChunked = r.body.mode == modeChunked
	cn.c.put(cn)
}

// CopyEndToEnd adds the answer's headers to dst, leaving out hop-by-hop
// ones: the fixed list and any named in Connection. Header strings are
// kept per connection, so the same headers on the next answer allocate
// nothing but the value slice.
func (r *Response) CopyEndToEnd(dst http.Header) {
	vals := make([]string, r.n)
	for i := 0; i < r.n; i++ {
		k := r.key(i)
		if hopByHop(k) || r.namedByConnection(k) {
			continue
		}
		hc := &r.cn.cache[i]
		if hc.raw != string(k) {
			hc.raw = string(k)
			hc.canon = http.CanonicalHeaderKey(hc.raw)
			hc.val = ""
		}
		if v := r.value(i); hc.val != string(v) {
			hc.val = string(v)
		}
		vals[i] = hc.val
		if prev, ok := dst[hc.canon]; ok {
			dst[hc.canon] = append(prev, hc.val)
		} else {
			dst[hc.canon] = vals[i : i+1 : i+1]
		}
	}
}

var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func hopByHop(k []byte) bool {
	for _, h := range hopHeaders {
		if asciiEqualFold(k, h) {
			return true
		}
	}
	return false
}

func (r *Response) namedByConnection(k []byte) bool {
	for i := 0; i < r.n; i++ {
		if !asciiEqualFold(r.key(i), "Connection") {
			continue
		}
		for t, rest := nextToken(r.value(i)); t != nil; t, rest = nextToken(rest) {
			if asciiEqualFold(t, k) {
				return true
			}
		}
	}
	return false
}

// asciiEqualFold compares header names and tokens, ASCII case-insensitive.
func asciiEqualFold[T string | []byte](a []byte, b T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
