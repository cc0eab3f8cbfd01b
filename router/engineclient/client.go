// Package engineclient is the router's HTTP/1.1 client to engines. A call
// runs on the caller's goroutine over a pooled keep-alive connection: the
// request head and body go out in one write, the answer is read through
// buffers the connection owns, and timeouts and cancellation are read
// deadlines on the socket. net/http's Transport would add two goroutines
// per connection (its read and write loops) and a wake-up between them and
// the caller for every request, plus a header map and its strings; on the
// router's hot path that was most of its cost over nginx.
//
// It speaks only what engines need: POST with a known length, answers
// framed by Content-Length, chunked encoding or connection close, 1xx
// skipped, keep-alive with the server's Keep-Alive timeout respected, and
// TLS (ALPN http/1.1) with a caller-given configuration.
package engineclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Config sets up a Client.
type Config struct {
	// ConnectTimeout bounds the TCP connect and, for TLS, the handshake.
	ConnectTimeout time.Duration
	// MaxIdlePerHost is how many idle connections are kept per endpoint.
	MaxIdlePerHost int
	// IdleTimeout closes a pooled connection idle this long. Keep it under
	// the engines' own keep-alive (llama-server and uvicorn close after
	// 5 s), so a reused connection is rarely one the engine just closed.
	IdleTimeout time.Duration
	// TLS is the base configuration for endpoints that speak TLS (nil:
	// the system roots); ServerName is set per endpoint.
	TLS func() *tls.Config
}

// Endpoint is where an engine listens. Build it once per instance.
type Endpoint struct {
	Addr       string // host:port, dialled as is
	TLS        bool
	ServerName string // verified name for TLS (the announced address)
	host       string // Host header value (Addr)
}

// NewEndpoint describes host:port, over TLS when tls is set.
func NewEndpoint(host string, port int, useTLS bool) Endpoint {
	addr := net.JoinHostPort(host, itoa(port))
	return Endpoint{Addr: addr, TLS: useTLS, ServerName: host, host: addr}
}

// Client holds the idle connections, per endpoint. Its zero value is not
// usable; make one with New.
type Client struct {
	cfg    Config
	dialer net.Dialer
	mu     sync.Mutex
	idle   map[Endpoint][]*conn
	closed bool
	// closesAfterChunked: endpoints seen closing a connection, without
	// saying so, after a chunked answer (llama-server does after every
	// stream); their connections are not pooled after one.
	closesAfterChunked map[Endpoint]bool
	// sessions resumes TLS sessions with engines (a new connection after
	// an idle one expired costs an abbreviated handshake, not a full one).
	sessions tls.ClientSessionCache
}

// New returns a Client.
func New(cfg Config) *Client {
	if cfg.MaxIdlePerHost <= 0 {
		cfg.MaxIdlePerHost = 64
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 4 * time.Second
	}
	return &Client{cfg: cfg, dialer: net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second},
		idle: map[Endpoint][]*conn{}, closesAfterChunked: map[Endpoint]bool{}, sessions: tls.NewLRUClientSessionCache(1024)}
}

// CloseIdle closes every idle connection and stops pooling new ones.
func (c *Client) CloseIdle() {
	c.mu.Lock()
	idle := c.idle
	c.idle, c.closed = map[Endpoint][]*conn{}, true
	c.mu.Unlock()
	for _, cs := range idle {
		for _, cn := range cs {
			_ = cn.nc.Close()
		}
	}
}

// get takes the most recently used idle connection to ep that has not
// outlived the idle timeout or the server's keep-alive.
func (c *Client) get(ep Endpoint, now time.Time) *conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	cs := c.idle[ep]
	for len(cs) > 0 {
		cn := cs[len(cs)-1]
		cs[len(cs)-1] = nil
		cs = cs[:len(cs)-1]
		if now.Before(cn.expires) {
			c.idle[ep] = cs
			return cn
		}
		_ = cn.nc.Close()
	}
	c.idle[ep] = cs
	return nil
}

// learnClosesAfterChunked records that ep closes connections after chunked
// answers, and drops its idle ones that carried one.
func (c *Client) learnClosesAfterChunked(ep Endpoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closesAfterChunked[ep] = true
	keep := c.idle[ep][:0]
	for _, cn := range c.idle[ep] {
		if cn.afterChunked {
			_ = cn.nc.Close()
		} else {
			keep = append(keep, cn)
		}
	}
	c.idle[ep] = keep
}

// put pools cn, or closes it when the pool is full or closed, or when its
// endpoint is known to close it after the chunked answer it just carried.
func (c *Client) put(cn *conn) {
	c.mu.Lock()
	if !c.closed && len(c.idle[cn.ep]) < c.cfg.MaxIdlePerHost && !(cn.afterChunked && c.closesAfterChunked[cn.ep]) {
		c.idle[cn.ep] = append(c.idle[cn.ep], cn)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	_ = cn.nc.Close()
}

// dial opens a new connection to ep (TLS included) within the connect
// timeout and ctx.
func (c *Client) dial(ctx context.Context, ep Endpoint) (*conn, error) {
	nc, err := c.dialer.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		return nil, err
	}
	if ep.TLS {
		var cfg *tls.Config
		if c.cfg.TLS != nil {
			cfg = c.cfg.TLS()
		}
		if cfg == nil {
			cfg = &tls.Config{}
		} else {
			cfg = cfg.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = ep.ServerName
		}
		if cfg.ClientSessionCache == nil {
			cfg.ClientSessionCache = c.sessions
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(nc, cfg)
		hctx := ctx
		if c.cfg.ConnectTimeout > 0 {
			var cancel context.CancelFunc
			hctx, cancel = context.WithTimeout(ctx, c.cfg.ConnectTimeout)
			defer cancel()
		}
		if err := tc.HandshakeContext(hctx); err != nil {
			_ = nc.Close()
			return nil, err
		}
		nc = tc
	}
	return newConn(c, ep, nc), nil
}

// ErrAborted is what a call's reads and writes fail with after Abort.
var ErrAborted = errors.New("engine call aborted")

// Do sends req to ep as part of call and reads the answer's status and
// headers, waiting for them until headerDeadline (zero: no limit); ctx
// bounds the dial. A reused connection that fails before any answer byte
// (the engine closed it while idle) is replaced and the request sent again,
// once. The Response is the caller's until Close; call.Abort, from any
// goroutine, fails whatever read or write is under way.
func (c *Client) Do(ctx context.Context, call *Call, ep Endpoint, req *Request, headerDeadline time.Time) (*Response, error) {
	for try := 0; ; try++ {
		var cn *conn
		if try == 0 { // a replay dials: the other idle ones may be as dead
			cn = c.get(ep, time.Now())
		}
		reused := cn != nil
		if cn == nil {
			var err error
			if cn, err = c.dial(ctx, ep); err != nil {
				return nil, err
			}
		}
		if err := call.attach(cn); err != nil {
			_ = cn.nc.Close()
			return nil, err
		}
		resp, err := cn.roundTrip(req, headerDeadline)
		if err == nil {
			return resp, nil
		}
		call.detach()
		_ = cn.nc.Close()
		if reused && try == 0 && call.Cause() == nil && replayable(err, cn.got) && ctx.Err() == nil {
			if cn.afterChunked {
				c.learnClosesAfterChunked(ep)
			}
			continue
		}
		return nil, fmt.Errorf("%s: %w", ep.Addr, err)
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}
