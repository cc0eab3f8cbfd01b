package router

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/openaifixture"
)

// The server both `llorch router` and `llorch home` run: bounded reads,
// no write timeout (answers stream as long as they last), and a drain
// that lets an answer in flight finish before Serve returns.
func TestHTTPServerDrainsAnswersInFlight(t *testing.T) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 20, TokenDelay: 10 * time.Millisecond})
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	srv := h.rt.HTTPServer()
	if srv.WriteTimeout != 0 || srv.ReadHeaderTimeout == 0 || srv.ReadTimeout == 0 || srv.IdleTimeout == 0 {
		t.Fatalf("server timeouts %+v", srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	req, _ := http.NewRequest("POST", "http://"+ln.Addr().String()+"/v1/chat/completions", strings.NewReader(chatBody(testModel, true)))
	req.Header.Set("Authorization", "Bearer "+clientToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	drained := make(chan error, 1)
	go func() { drained <- h.rt.Drain(srv) }()
	body, err := io.ReadAll(resp.Body)
	if err != nil || !strings.Contains(string(body), "[DONE]") {
		t.Fatalf("the answer in flight was cut by the drain: %v %q", err, body)
	}
	if err := <-drained; err != nil {
		t.Fatalf("drain: %v", err)
	}
	if err := <-served; err != http.ErrServerClosed {
		t.Fatalf("serve: %v", err)
	}
}
