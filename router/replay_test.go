package router

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
)

// An engine that closes a keep-alive connection just as the router reuses
// it (its idle timeout racing our next request) must not fail the request:
// nothing was answered, so it is sent again on a fresh connection to the
// same engine, the only one serving the model here.
func TestIdleCloseRaceIsRetriedOnFreshConnection(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go serveOneThenHangUp(c)
		}
	}()
	h := newHarness(t, nil, inst(t, "only", "n1", testModel, "http://"+l.Addr().String()))
	for i := 0; i < 3; i++ {
		st, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
		if st != 200 {
			t.Fatalf("request %d: status %d %s", i, st, body)
		}
	}
	if n := conns.Load(); n < 2 {
		t.Fatalf("%d connection(s): the race was never exercised", n)
	}
}

// serveOneThenHangUp answers the first request on a connection with
// keep-alive, then closes the connection without answering the next one.
func serveOneThenHangUp(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	io.Copy(io.Discard, req.Body)
	body := `{"id":"x","object":"chat.completion","created":1,"model":"` + testModel + `","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	// Wait for the next request on this connection, then hang up on it.
	if _, err := http.ReadRequest(br); err == nil {
		return
	}
}
