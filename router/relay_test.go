package router

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/llorch/llorch/internal/openaifixture"
)

func TestChatRelaysAndSwapsTokens(t *testing.T) {
	fx, u := startFixture(t)
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))

	status, hdr, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false), "X-Correlation-Id", "req-42", "Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	if hdr.Get(CorrelationHeader) != "req-42" {
		t.Errorf("correlation id not echoed: %q", hdr.Get(CorrelationHeader))
	}
	var resp struct {
		Choices []struct{ Message struct{ Content string } }
	}
	if err := json.Unmarshal([]byte(body), &resp); err != nil || len(resp.Choices) != 1 || resp.Choices[0].Message.Content != openaifixture.Text(8) {
		t.Fatalf("unexpected body (%v): %s", err, body)
	}
	seen := fx.Seen()
	if len(seen) != 1 {
		t.Fatalf("fixture saw %d requests, want 1", len(seen))
	}
	if seen[0].Authorization != "Bearer "+engineToken {
		t.Errorf("engine saw Authorization %q, want the engine token", seen[0].Authorization)
	}
	if strings.Contains(seen[0].Authorization, clientToken) {
		t.Errorf("client token reached the engine")
	}
	if seen[0].CorrelationID != "req-42" || seen[0].Traceparent == "" {
		t.Errorf("engine saw correlation %q traceparent %q", seen[0].CorrelationID, seen[0].Traceparent)
	}

	// An insane correlation id is replaced with a UUID, on errors too.
	status, hdr, _ = h.do("POST", "/v1/chat/completions", chatBody("nope", false), "X-Correlation-Id", strings.Repeat("x", 129))
	if status != 404 {
		t.Fatalf("status %d, want 404", status)
	}
	if _, err := uuid.Parse(hdr.Get(CorrelationHeader)); err != nil {
		t.Errorf("generated correlation id %q is not a UUID", hdr.Get(CorrelationHeader))
	}
}

func TestStreamingRelaysEveryEvent(t *testing.T) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 20})
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	for _, path := range []string{"/v1/chat/completions", "/v1/completions"} {
		body := chatBody(testModel, true)
		if path == "/v1/completions" {
			body = `{"model":"tiny","stream":true,"prompt":"hi"}`
		}
		resp, err := h.cl.Do(h.req("POST", path, body))
		if err != nil {
			t.Fatal(err)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
			t.Errorf("%s: content type %q", path, ct)
		}
		evs := readSSE(t, resp.Body)
		resp.Body.Close()
		if got := streamText(t, evs); got != openaifixture.Text(20) {
			t.Errorf("%s: streamed text %q", path, got)
		}
		if evs[len(evs)-1].data != "[DONE]" {
			t.Errorf("%s: last event %+v, want [DONE]", path, evs[len(evs)-1])
		}
	}
}

// streamText joins the content of chat or completion chunks.
func streamText(t testing.TB, evs []sseEvent) string {
	t.Helper()
	var sb strings.Builder
	for _, e := range evs {
		if e.data == "[DONE]" || e.event == "error" {
			continue
		}
		var c struct {
			Choices []struct {
				Text  string
				Delta struct{ Content string }
			}
		}
		if err := json.Unmarshal([]byte(e.data), &c); err != nil {
			t.Fatalf("bad chunk %q: %v", e.data, err)
		}
		for _, ch := range c.Choices {
			sb.WriteString(ch.Text + ch.Delta.Content)
		}
	}
	return sb.String()
}

// Streams arrive event by event: the first token is at the client while
// the engine is still producing the rest. No wall-clock bound: the engine
// waits tokenDelay before each token, so when the first read returns the
// engine must not have finished; with 2 of 3 tokens still to come it has
// 2×tokenDelay left, far more than a loaded machine needs to relay one.
func TestStreamingIsNotBuffered(t *testing.T) {
	const tokenDelay = 2 * time.Second
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 3, TokenDelay: tokenDelay})
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	resp, err := h.cl.Do(h.req("POST", "/v1/chat/completions", chatBody(testModel, true)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4096)
	n, err := resp.Body.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), Token0) {
		t.Fatalf("first read: %q %v", buf[:n], err)
	}
	if fx.Finished() != 0 || fx.InFlight() != 1 {
		t.Fatal("the first token reached the client only after the engine had finished: the stream is buffered")
	}
}

const Token0 = "tok0 "

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 200, TokenDelay: 20 * time.Millisecond})
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	ctx, cancel := context.WithCancel(context.Background())
	req := h.req("POST", "/v1/chat/completions", chatBody(testModel, true)).WithContext(ctx)
	resp, err := h.cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cancel()
	resp.Body.Close()
	waitFor(t, 2*time.Second, "upstream request to be cancelled", func() bool { return fx.Canceled() == 1 && fx.InFlight() == 0 })
	t.Logf("upstream cancelled %v after the client left", time.Since(start).Round(time.Millisecond))
	waitFor(t, time.Second, "router in-flight back to 0", func() bool { return h.rt.state.InFlight("a") == 0 })
	if h.rt.state.EjectedFor("a") != 0 {
		t.Fatal("a client leaving counted as an engine fault")
	}
}

// Hundreds of concurrent streams through the router: every one complete,
// none truncated (the failure mode of golang/go#40747).
func TestConcurrentStreamsComplete(t *testing.T) {
	const streams, tokens = 200, 40
	fa, ua := startFixture(t)
	fb, ub := startFixture(t)
	for _, f := range []*openaifixture.Server{fa, fb} {
		f.SetBehavior(openaifixture.Behavior{Tokens: tokens, TokenDelay: time.Millisecond})
	}
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, ua), inst(t, "b", "n2", testModel, ub))
	want := openaifixture.Text(tokens)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad []string
	start := time.Now()
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := h.cl.Do(h.req("POST", "/v1/chat/completions", chatBody(testModel, true)))
			if err != nil {
				mu.Lock()
				bad = append(bad, err.Error())
				mu.Unlock()
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			evs := readSSE(t, strings.NewReader(string(b)))
			if err != nil || len(evs) == 0 || evs[len(evs)-1].data != "[DONE]" || streamText(t, evs) != want {
				mu.Lock()
				bad = append(bad, string(b))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d concurrent streams of %d tokens in %v; split a=%d b=%d", streams, tokens, time.Since(start).Round(time.Millisecond), fa.Finished(), fb.Finished())
	if len(bad) > 0 {
		t.Fatalf("%d of %d streams truncated or failed; first: %.300s", len(bad), streams, bad[0])
	}
	if fa.Finished() == 0 || fb.Finished() == 0 {
		t.Errorf("least-in-flight did not spread concurrent load: a=%d b=%d", fa.Finished(), fb.Finished())
	}
}
