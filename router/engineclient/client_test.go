package engineclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/tlsfiles/tlstest"
)

func endpointOf(t *testing.T, rawURL string) Endpoint {
	t.Helper()
	u := strings.TrimPrefix(strings.TrimPrefix(rawURL, "http://"), "https://")
	host, port, err := net.SplitHostPort(u)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return NewEndpoint(host, p, strings.HasPrefix(rawURL, "https://"))
}

// countConns counts the connections a test server accepted.
func countConns(srv *httptest.Server) *atomic.Int64 {
	var n atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.Add(1)
		}
	}
	return &n
}

func do(t *testing.T, c *Client, ep Endpoint, path, body string) (int, http.Header, string) {
	t.Helper()
	var call Call
	req := Request{Path: path, Body: []byte(body)}
	req.Set("Content-Type", "application/json")
	req.Set("X-Test", "yes")
	resp, err := c.Do(context.Background(), &call, ep, &req, time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatalf("Do %s: %v", path, err)
	}
	defer resp.Close()
	h := http.Header{}
	resp.CopyEndToEnd(h)
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return resp.StatusCode, h, string(b)
}

func TestRequestAndAnswersOverOneConnection(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Echo-Header", r.Header.Get("X-Test")+"/"+r.Header.Get("Content-Type"))
		w.Header().Set("X-Hop", "drop me")
		w.Header().Set("Connection", "X-Hop")
		switch r.URL.Path {
		case "/chunked":
			for i := range 3 {
				_, _ = w.Write([]byte("part" + strconv.Itoa(i) + ":"))
				w.(http.Flusher).Flush()
			}
			_, _ = w.Write(b)
		case "/status":
			w.WriteHeader(http.StatusTeapot)
			_, _ = w.Write([]byte("short"))
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			_, _ = w.Write(b)
		}
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	c := New(Config{ConnectTimeout: time.Second})
	defer c.CloseIdle()
	ep := endpointOf(t, srv.URL)

	for i := range 3 {
		st, h, body := do(t, c, ep, "/length", `{"n":`+strconv.Itoa(i)+`}`)
		if st != 200 || body != `{"n":`+strconv.Itoa(i)+`}` || h.Get("X-Echo-Header") != "yes/application/json" {
			t.Fatalf("length answer %d: %d %q %v", i, st, body, h)
		}
		if h.Get("X-Hop") != "" || h.Get("Connection") != "" {
			t.Errorf("hop-by-hop headers relayed: %v", h)
		}
	}
	big := strings.Repeat("x", 200<<10) // over the inline size: two writes
	if st, _, body := do(t, c, ep, "/chunked", big); st != 200 || body != "part0:part1:part2:"+big {
		t.Fatalf("chunked answer: %d, %d bytes", st, len(body))
	}
	if st, _, body := do(t, c, ep, "/status", ""); st != http.StatusTeapot || body != "short" {
		t.Fatalf("status answer: %d %q", st, body)
	}
	if st, _, body := do(t, c, ep, "/empty", ""); st != http.StatusNoContent || body != "" {
		t.Fatalf("204 answer: %d %q", st, body)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 6 sequential requests, want 1 (keep-alive)", n)
	}
}

// rawServer answers each connection with handle, which gets the request
// head and can write anything.
func rawServer(t *testing.T, handle func(n int, c net.Conn, br *bufio.Reader)) (Endpoint, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(conns.Add(1))
			go func() {
				defer c.Close()
				handle(n, c, bufio.NewReader(c))
			}()
		}
	}()
	return endpointOf(t, "http://"+ln.Addr().String()), &conns
}

// readRequest consumes one request (head and Content-Length body).
func readRequest(br *bufio.Reader) (string, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(req.Body)
	return req.URL.Path + " " + string(b), err
}

func TestStaleKeepAliveIsReplayedOnAFreshConnection(t *testing.T) {
	// The engine answers once per connection and then closes it without
	// saying so: the pooled connection is dead when reused.
	ep, conns := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		if _, err := readRequest(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		time.Sleep(20 * time.Millisecond)
	})
	c := New(Config{ConnectTimeout: time.Second})
	defer c.CloseIdle()
	for i := range 3 {
		if st, _, body := do(t, c, ep, "/x", "{}"); st != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, st, body)
		}
		time.Sleep(50 * time.Millisecond) // the engine has closed by now
	}
	if n := conns.Load(); n != 3 {
		t.Errorf("%d connections, want 3 (each dead one replaced)", n)
	}
}

func TestInformationalAnswersAreSkippedAndCloseIsHonoured(t *testing.T) {
	ep, conns := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			if _, err := readRequest(br); err != nil {
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close")
			return
		}
	})
	c := New(Config{ConnectTimeout: time.Second})
	defer c.CloseIdle()
	for range 2 {
		if st, _, body := do(t, c, ep, "/x", "{}"); st != 200 || body != "until close" {
			t.Fatalf("got %d %q", st, body)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (a closed one is not pooled)", n)
	}
}

func TestMalformedAnswersFailClearly(t *testing.T) {
	for name, answer := range map[string]string{
		"bad status line":  "HTTP/1.1 2x0 OK\r\n\r\n",
		"folded header":    "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
		"two lengths":      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
		"unknown encoding": "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"header too large": "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", 70<<10) + "\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			ep, _ := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
				if _, err := readRequest(br); err == nil {
					_, _ = io.WriteString(c, answer)
				}
			})
			c := New(Config{ConnectTimeout: time.Second})
			defer c.CloseIdle()
			var call Call
			req := Request{Path: "/x"}
			resp, err := c.Do(context.Background(), &call, ep, &req, time.Now().Add(2*time.Second))
			if err == nil {
				resp.Close()
				t.Fatalf("accepted %q", answer)
			}
		})
	}
}

func TestBrokenChunkedBodyIsAnError(t *testing.T) {
	ep, _ := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		if _, err := readRequest(br); err == nil {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
		}
	})
	c := New(Config{ConnectTimeout: time.Second})
	defer c.CloseIdle()
	var call Call
	req := Request{Path: "/x"}
	resp, err := c.Do(context.Background(), &call, ep, &req, time.Now().Add(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Close()
	if b, err := io.ReadAll(resp.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read %q, %v; want io.ErrUnexpectedEOF", b, err)
	}
}

func TestAbortAndDeadlinesStopBlockedReads(t *testing.T) {
	release := make(chan struct{})
	ep, _ := rawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		if _, err := readRequest(br); err != nil {
			return
		}
		if n == 2 { // headers, then silence
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
		}
		<-release
	})
	defer close(release)
	c := New(Config{ConnectTimeout: time.Second})
	defer c.CloseIdle()

	// 1: no answer; the header deadline passes.
	var call Call
	req := Request{Path: "/x"}
	start := time.Now()
	_, err := c.Do(context.Background(), &call, ep, &req, time.Now().Add(100*time.Millisecond))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("header deadline: %v, want a timeout", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Fatalf("the deadline did not end the wait")
	}

	// 2: the body stalls; Abort from another goroutine ends the read at once
	// and the cause is kept.
	call.Reset()
	resp, err := c.Do(context.Background(), &call, ep, &req, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	cause := errors.New("the client left")
	time.AfterFunc(50*time.Millisecond, func() { call.Abort(cause) })
	b, err := io.ReadAll(resp.Body)
	resp.Close()
	if err == nil || string(b) != "abc" || !errors.Is(call.Cause(), cause) {
		t.Fatalf("after abort: %q, %v, cause %v", b, err, call.Cause())
	}
	// A deadline set after the abort must not revive the connection.
	if err := resp.SetReadDeadline(time.Now().Add(time.Hour)); !errors.Is(err, cause) {
		t.Errorf("SetReadDeadline after Abort: %v", err)
	}
}

func TestTLSEndpointsVerifyTheAnnouncedName(t *testing.T) {
	ca := tlstest.NewCA(t, "engines")
	certPEM, keyPEM := ca.Issue(t, "engine", "127.0.0.1")
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "secure "+r.Proto)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.StartTLS()
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)

	c := New(Config{ConnectTimeout: time.Second, TLS: func() *tls.Config { return &tls.Config{RootCAs: pool} }})
	defer c.CloseIdle()
	ep := endpointOf(t, srv.URL)
	if st, _, body := do(t, c, ep, "/x", ""); st != 200 || body != "secure HTTP/1.1" {
		t.Fatalf("over TLS: %d %q", st, body)
	}

	wrong := New(Config{ConnectTimeout: time.Second}) // system roots: the test CA is unknown
	defer wrong.CloseIdle()
	var call Call
	req := Request{Path: "/x"}
	_, err = wrong.Do(context.Background(), &call, ep, &req, time.Now().Add(2*time.Second))
	var unk x509.UnknownAuthorityError
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &unk) && !errors.As(err, &verr) {
		t.Fatalf("unknown CA: %v, want a verification error", err)
	}
}

func TestIdleConnectionsExpireBeforeTheEnginesKeepAlive(t *testing.T) {
	ep, conns := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			if _, err := readRequest(br); err != nil {
				return
			}
			// A one-second keep-alive: pooled for half a second at most.
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1, max=100\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	c := New(Config{ConnectTimeout: time.Second})
	defer c.CloseIdle()
	do(t, c, ep, "/x", "")
	do(t, c, ep, "/x", "") // reused
	time.Sleep(700 * time.Millisecond)
	do(t, c, ep, "/x", "") // the pooled one expired: a new connection
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// An engine that closes the connection after every chunked answer without
// saying so (llama-server after a stream): several such connections idle
// at once must not fail a request (the replay dials), and once learnt they
// are not pooled, so later requests do not pay a failed round trip.
func TestEndpointThatClosesAfterChunkedAnswers(t *testing.T) {
	ep, _ := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			p, err := readRequest(br)
			if err != nil {
				return
			}
			if strings.HasPrefix(p, "/stream") {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
				return // closes, as llama-server does
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	c := New(Config{ConnectTimeout: time.Second})
	defer c.CloseIdle()
	streams := func() {
		done := make(chan struct{})
		for range 3 {
			go func() { defer func() { done <- struct{}{} }(); do(t, c, ep, "/stream", "") }()
		}
		for range 3 {
			<-done
		}
	}
	streams()
	time.Sleep(20 * time.Millisecond) // the engine has closed all three
	for range 3 {
		if st, _, body := do(t, c, ep, "/json", ""); st != 200 || body != "ok" {
			t.Fatalf("after streams: %d %q", st, body)
		}
	}
	streams()
	// Learnt: no connection that carried a stream is pooled.
	c.mu.Lock()
	for _, cn := range c.idle[ep] {
		if cn.afterChunked {
			t.Error("a connection that carried a chunked answer was pooled after learning")
		}
	}
	learnt := c.closesAfterChunked[ep]
	c.mu.Unlock()
	if !learnt {
		t.Error("the endpoint's closing after chunked answers was not learnt")
	}
	if st, _, body := do(t, c, ep, "/json", ""); st != 200 || body != "ok" {
		t.Fatalf("after learning: %d %q", st, body)
	}
}
