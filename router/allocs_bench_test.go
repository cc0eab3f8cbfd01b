package router

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/internal/accesslog"
	"github.com/llorch/llorch/registry"
)

// BenchmarkProxyAllocs counts what one proxied request costs the router
// itself, as shipped (info level, so the access line is written): the
// client and the engine on the other ends are raw sockets replaying fixed
// bytes without allocating, so -benchmem's allocs/op and B/op are the
// router's own (its HTTP server included). `make bench` reports them
// against the ≤30 allocations goal.
//
//	go test -run '^$' -bench '^BenchmarkProxyAllocs$' -benchmem ./router/
func BenchmarkProxyAllocs(b *testing.B) {
	// floor: Go's HTTP server answering the same request with a fixed
	// body and nothing else, which every handler pays; the router's own
	// share is json (or sse) minus floor.
	b.Run("floor", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		answer := []byte(`{"ok":true}`)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(answer)
		})}
		go func() { _ = srv.Serve(ln) }()
		b.Cleanup(func() { _ = srv.Close() })
		measureRoundTrips(b, ln.Addr().String(), rawChatRequest(testModel, false))
	})
	for _, tc := range []struct {
		name   string
		stream bool
	}{{"json", false}, {"sse", true}} {
		b.Run(tc.name, func(b *testing.B) {
			up := startCannedEngine(b, tc.stream)
			rtURL := startShippedRouter(b, inst(b, "a", "n1", testModel, "http://"+up))
			measureRoundTrips(b, rtURL, rawChatRequest(testModel, tc.stream))
		})
	}
}

// measureRoundTrips sends req over one keep-alive connection to addr, 50
// times to warm the pools and connections, then b.N times measured.
func measureRoundTrips(b *testing.B, addr string, req []byte) {
	c := dialRaw(b, addr)
	for range 50 {
		c.roundTrip(b, req)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		c.roundTrip(b, req)
	}
}

// startShippedRouter serves the router on loopback with its shipped server
// settings and an info-level logger writing to nowhere.
func startShippedRouter(b *testing.B, insts ...registry.Instance) string {
	b.Helper()
	cfg := testConfig()
	log := hclog.New(&hclog.LoggerOptions{Name: "router", Level: hclog.Info, Output: io.Discard})
	rt, err := New(cfg, registry.NewStatic(insts...), nil, log, nil)
	if err != nil {
		b.Fatal(err)
	}
	rt.SetAccessLog(accesslog.New(io.Discard, "router", false)) // as cli/router.go does
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = rt.Run(ctx) }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := rt.HTTPServer()
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close(); cancel(); <-done })
	waitFor(b, 5*time.Second, "first snapshot", rt.Ready)
	return ln.Addr().String()
}

func rawChatRequest(model string, stream bool) []byte {
	body := chatBody(model, stream)
	return []byte("POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer " + clientToken +
		"\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}

// rawConn is a keep-alive client connection that reads answers without
// allocating: status line, headers (Content-Length or chunked), body.
type rawConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(b *testing.B, addr string) *rawConn {
	b.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return &rawConn{c: c, br: bufio.NewReaderSize(c, 64<<10)}
}

func (r *rawConn) roundTrip(b *testing.B, req []byte) {
	if _, err := r.c.Write(req); err != nil {
		b.Fatal(err)
	}
	status, err := readRawResponse(r.br)
	if err != nil || status != http.StatusOK {
		b.Fatalf("status %d: %v", status, err)
	}
}

var errRawFormat = errors.New("malformed HTTP response")

// readRawResponse reads one response and discards its body.
func readRawResponse(br *bufio.Reader) (int, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 {
		return 0, errRawFormat
	}
	status := int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	length, chunked, err := readRawHeaders(br)
	if err != nil {
		return status, err
	}
	if !chunked {
		_, err = br.Discard(length)
		return status, err
	}
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return status, err
		}
		n, ok := parseHex(bytes.TrimRight(line, "\r\n"))
		if !ok {
			return status, errRawFormat
		}
		if _, err := br.Discard(n + 2); err != nil { // the chunk and its CRLF
			return status, err
		}
		if n == 0 {
			return status, nil
		}
	}
}

// readRawHeaders reads header lines to the blank one.
func readRawHeaders(br *bufio.Reader) (length int, chunked bool, err error) {
	length = -1
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, false, err
		}
		if len(line) <= 2 {
			break
		}
		if k, v, ok := bytes.Cut(line, []byte(":")); ok {
			v = bytes.TrimSpace(v)
			switch {
			case asciiEqualFold(k, "content-length"):
				n, err := strconv.Atoi(string(v)) // no allocation: the conversion is elided
				if err != nil {
					return 0, false, errRawFormat
				}
				length = n
			case asciiEqualFold(k, "transfer-encoding"):
				chunked = asciiEqualFold(v, "chunked")
			}
		}
	}
	if length < 0 && !chunked {
		return 0, false, errRawFormat
	}
	return max(length, 0), chunked, nil
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func parseHex(b []byte) (int, bool) {
	if len(b) == 0 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		switch {
		case '0' <= c && c <= '9':
			n = n<<4 | int(c-'0')
		case 'a' <= c && c <= 'f':
			n = n<<4 | int(c-'a'+10)
		case 'A' <= c && c <= 'F':
			n = n<<4 | int(c-'A'+10)
		default:
			return 0, false
		}
	}
	return n, true
}

// startCannedEngine answers every request with fixed bytes: a JSON chat
// completion, or (stream) 16 SSE token events and [DONE] in chunked
// encoding, as llama-server sends them. It allocates nothing per request.
func startCannedEngine(b *testing.B, stream bool) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	resp := cannedJSON()
	if stream {
		resp = cannedSSE(16)
	}
	var wg sync.WaitGroup
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReaderSize(c, 64<<10)
				for {
					n, _, err := readRawHeaders(br)
					if err != nil {
						return
					}
					if _, err := br.Discard(n); err != nil {
						return
					}
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func cannedJSON() []byte {
	body := `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"tiny","choices":[{"index":0,"message":{"role":"assistant","content":"hello there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}`
	return []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nServer: llama.cpp\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\nKeep-Alive: timeout=5, max=100\r\n\r\n" + body)
}

func cannedSSE(tokens int) []byte {
	var out bytes.Buffer
	out.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nServer: llama.cpp\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5, max=100\r\n\r\n")
	chunk := func(s string) {
		out.WriteString(strconv.FormatInt(int64(len(s)), 16) + "\r\n" + s + "\r\n")
	}
	for i := range tokens {
		chunk(`data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"t` + strconv.Itoa(i) + ` "}}],"created":1,"id":"chatcmpl-1","model":"tiny","object":"chat.completion.chunk"}` + "\n\n")
	}
	chunk(`data: {"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"created":1,"id":"chatcmpl-1","model":"tiny","object":"chat.completion.chunk","usage":{"completion_tokens":16,"prompt_tokens":5,"total_tokens":21}}` + "\n\n")
	chunk("data: [DONE]\n\n")
	chunk("")
	return out.Bytes()
}
