package router

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/llorch/llorch/internal/openaifixture"
)

func decodeErr(t testing.TB, body string) wireError {
	t.Helper()
	var env struct{ Error wireError }
	if err := json.Unmarshal([]byte(body), &env); err != nil {
		t.Fatalf("error body is not the envelope: %v: %s", err, body)
	}
	return env.Error
}

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
// the engine is still producing the rest.
func TestStreamingIsNotBuffered(t *testing.T) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 3, TokenDelay: 400 * time.Millisecond})
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	start := time.Now()
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
	if el := time.Since(start); el > 700*time.Millisecond {
		t.Fatalf("first token took %v; the stream is buffered", el)
	}
}

const Token0 = "tok0 "

func TestErrors(t *testing.T) {
	fx, u := startFixture(t)
	h := newHarness(t, func(c *Config) { c.MaxBodyBytes = 1024 }, inst(t, "a", "n1", testModel, u))
	cases := []struct {
		name, method, path, body string
		status                   int
		code, param              string
	}{
		{"unknown model", "POST", "/v1/chat/completions", chatBody("gpt-404", false), 404, CodeModelNotAvailable, "model"},
		{"path not served", "POST", "/v1/embeddings", `{"model":"other","input":"x"}`, 404, CodeModelNotAvailable, "model"},
		{"missing model", "POST", "/v1/chat/completions", `{"messages":[]}`, 400, CodeInvalidParams, "model"},
		{"stream not bool", "POST", "/v1/chat/completions", `{"model":"tiny","stream":"yes","messages":[]}`, 400, CodeInvalidParams, "stream"},
		{"missing messages", "POST", "/v1/chat/completions", `{"model":"tiny"}`, 400, CodeInvalidParams, "messages"},
		{"missing prompt", "POST", "/v1/completions", `{"model":"tiny"}`, 400, CodeInvalidParams, "prompt"},
		{"not an object", "POST", "/v1/chat/completions", `[1,2]`, 400, CodeInvalidParams, ""},
		{"bad json", "POST", "/v1/chat/completions", `{"model":`, 400, CodeInvalidParams, ""},
		{"too large", "POST", "/v1/chat/completions", `{"model":"tiny","messages":"` + strings.Repeat("x", 2000) + `"}`, 413, CodeRequestTooLarge, ""},
		{"wrong method", "GET", "/v1/chat/completions", ``, 405, CodeMethodNotAllowed, ""},
		{"no endpoint", "GET", "/v2/whatever", ``, 404, CodeNotFound, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, hdr, body := h.do(c.method, c.path, c.body)
			if status != c.status {
				t.Fatalf("status %d, want %d: %s", status, c.status, body)
			}
			e := decodeErr(t, body)
			if e.Code != c.code || e.Param != c.param || e.Message == "" || e.Type == "" {
				t.Errorf("error %+v, want code %s param %q", e, c.code, c.param)
			}
			if hdr.Get(CorrelationHeader) == "" {
				t.Errorf("no correlation id on the error")
			}
		})
	}
	if n := fx.Requests(); n != 0 {
		t.Errorf("bad requests reached the engine %d times", n)
	}
}

func TestAuth(t *testing.T) {
	fx, u := startFixture(t)
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	for name, hdr := range map[string][]string{
		"missing": {"Authorization", ""},
		"wrong":   {"Authorization", "Bearer not-the-token"},
		"basic":   {"Authorization", "Basic Zm9vOmJhcg=="},
	} {
		for _, path := range []string{"/v1/chat/completions", "/v1/models"} {
			status, rh, body := h.do("POST", path, chatBody(testModel, false), hdr...)
			if status != 401 {
				t.Errorf("%s token on %s: status %d, want 401: %s", name, path, status, body)
				continue
			}
			var b struct{ Code string }
			if json.Unmarshal([]byte(body), &b); b.Code == "" {
				var env struct{ Error struct{ Code string } }
				json.Unmarshal([]byte(body), &env)
				b.Code = env.Error.Code
			}
			if b.Code == "" {
				t.Errorf("%s token: 401 without a code: %s", name, body)
			}
			if rh.Get(CorrelationHeader) == "" {
				t.Errorf("%s token: 401 without correlation id", name)
			}
		}
	}
	if n := fx.Requests(); n != 0 {
		t.Fatalf("unauthenticated requests reached the engine %d times", n)
	}
	if status, _, _ := h.do("GET", "/healthz", "", "Authorization", ""); status != 200 {
		t.Errorf("/healthz without token: %d", status)
	}
	if status, _, _ := h.do("GET", "/metrics", "", "Authorization", ""); status != 200 {
		t.Errorf("/metrics without token (metrics-auth off): %d", status)
	}
	h2 := newHarness(t, func(c *Config) { c.MetricsAuth = true }, inst(t, "a", "n1", testModel, u))
	if status, _, _ := h2.do("GET", "/metrics", "", "Authorization", ""); status != 401 {
		t.Errorf("/metrics without token (metrics-auth on): %d, want 401", status)
	}
	if status, _, _ := h2.do("GET", "/metrics", ""); status != 200 {
		t.Errorf("/metrics with token: %d", status)
	}
}

func TestNonLoopbackNeedsToken(t *testing.T) {
	cfg := testConfig()
	cfg.Addr, cfg.APIToken = "0.0.0.0:8080", ""
	if _, err := New(cfg, nil, nil, nil, nil); err == nil {
		t.Fatal("New without a source: want error")
	}
	_, err := New(cfg, staticEmpty(), nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "NON_LOOPBACK_WITHOUT_TOKEN") {
		t.Fatalf("non-loopback bind without token: got %v, want NON_LOOPBACK_WITHOUT_TOKEN", err)
	}
	cfg.APIToken = strings.Repeat("k", 32)
	if _, err := New(cfg, staticEmpty(), nil, nil, nil); err != nil {
		t.Fatalf("non-loopback bind with a 32-char token: %v", err)
	}
}

func TestRetryBeforeFirstByte(t *testing.T) {
	dead := closedPortURL(t)
	for _, tc := range []struct {
		name  string
		fault openaifixture.Behavior
	}{
		{"close", openaifixture.Behavior{Fault: openaifixture.FaultCloseBeforeFirstByte}},
		{"503", openaifixture.Behavior{Fault: openaifixture.FaultStatus, Status: 503}},
		{"header timeout", openaifixture.Behavior{FirstByteDelay: 3 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad, ub := startFixture(t)
			bad.SetBehavior(tc.fault)
			good, ug := startFixture(t)
			// "a" sorts first, so it is tried first while loads are equal;
			// the dead port sits in between.
			h := newHarness(t, func(c *Config) { c.FirstByteTimeout = 150 * time.Millisecond; c.EjectAfter = 1000 },
				inst(t, "a", "n1", testModel, ub), inst(t, "b", "n2", testModel, dead), inst(t, "c", "n3", testModel, ug))
			const n = 10
			for i := 0; i < n; i++ {
				stream := i%2 == 0
				status, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, stream))
				if status != 200 || !strings.Contains(body, "tok7") {
					t.Fatalf("request %d: status %d: %s", i, status, body)
				}
			}
			if bad.Requests() != n || good.Finished() != n {
				t.Fatalf("bad saw %d, good finished %d; want %d each", bad.Requests(), good.Finished(), n)
			}
			if r := h.metricSum("llorch_router_retries_total"); r != 2*n {
				t.Errorf("retries metric %v, want %d", r, 2*n)
			}
		})
	}
}

func TestAllInstancesFail(t *testing.T) {
	bad, ub := startFixture(t)
	bad.SetBehavior(openaifixture.Behavior{Fault: openaifixture.FaultStatus, Status: 503})
	h := newHarness(t, func(c *Config) { c.Retries = 1 },
		inst(t, "a", "n1", testModel, ub), inst(t, "b", "n2", testModel, closedPortURL(t)), inst(t, "c", "n3", testModel, ub))
	status, hdr, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
	e := decodeErr(t, body)
	if status != 503 || e.Code != CodeReplicaExhausted || !e.Retriable || hdr.Get("Retry-After") == "" {
		t.Fatalf("status %d, error %+v, Retry-After %q", status, e, hdr.Get("Retry-After"))
	}
	if bad.Requests() != 1 {
		t.Fatalf("with retries=1, two instances are tried; the 503 one saw %d", bad.Requests())
	}
}

func TestMidStreamFailureEndsWithErrorEvent(t *testing.T) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 10, Fault: openaifixture.FaultDieMidStream, DieAfter: 3})
	other, uo := startFixture(t)
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u), inst(t, "b", "n2", testModel, uo))
	resp, err := h.cl.Do(h.req("POST", "/v1/chat/completions", chatBody(testModel, true)))
	if err != nil {
		t.Fatal(err)
	}
	evs := readSSE(t, resp.Body)
	resp.Body.Close()
	if len(evs) != 4 {
		t.Fatalf("got %d events, want 3 tokens and an error: %+v", len(evs), evs)
	}
	if got := streamText(t, evs); got != openaifixture.Text(3) {
		t.Errorf("tokens before the failure: %q", got)
	}
	last := evs[3]
	var env struct{ Error wireError }
	if last.event != "error" || json.Unmarshal([]byte(last.data), &env) != nil || env.Error.Code != CodeWorkerReset {
		t.Fatalf("last event %+v, want event: error with WORKER_RESET", last)
	}
	if other.Requests() != 0 {
		t.Errorf("a stream that had started was retried elsewhere")
	}

	// Non-streamed: the client sees a broken response, never a
	// complete-looking one.
	fx.SetBehavior(openaifixture.Behavior{Fault: openaifixture.FaultDieMidStream})
	resp, err = h.cl.Do(h.req("POST", "/v1/chat/completions", chatBody(testModel, false)))
	if err == nil {
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil {
			t.Fatalf("a body cut by the engine reached the client as complete: %d %s", resp.StatusCode, b)
		}
	}
	if other.Requests() != 0 {
		t.Errorf("a committed answer was retried elsewhere")
	}
}

func TestIdleStreamTimeout(t *testing.T) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 3, TokenDelay: 150 * time.Millisecond})
	h := newHarness(t, func(c *Config) { c.IdleStreamTimeout = 50 * time.Millisecond; c.FirstByteTimeout = time.Second },
		inst(t, "a", "n1", testModel, u))
	// The fixture sends headers at once, then waits 150ms per token: the
	// first event comes within the first-byte timeout, the second is late.
	// (Headers count as nothing: the first event is the first byte.)
	resp, err := h.cl.Do(h.req("POST", "/v1/chat/completions", chatBody(testModel, true)))
	if err != nil {
		t.Fatal(err)
	}
	evs := readSSE(t, resp.Body)
	resp.Body.Close()
	if len(evs) != 2 || evs[1].event != "error" || !strings.Contains(evs[1].data, CodeWorkerReset) {
		t.Fatalf("events %+v, want one token then a WORKER_RESET error", evs)
	}
	waitFor(t, 2*time.Second, "upstream cancelled", func() bool { return fx.Canceled() == 1 })
}

func TestFourXXNeverEjects(t *testing.T) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Fault: openaifixture.FaultStatus, Status: 400})
	h := newHarness(t, func(c *Config) { c.EjectAfter = 2 }, inst(t, "a", "n1", testModel, u))
	for i := 0; i < 30; i++ {
		status, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
		if status != 400 || !strings.Contains(body, "injected failure") {
			t.Fatalf("request %d: %d %s (4xx must pass through)", i, status, body)
		}
	}
	if d := h.rt.state.EjectedFor("a"); d != 0 {
		t.Fatalf("a 4xx storm ejected the instance for %v", d)
	}
	if v := h.metricSum("llorch_router_ejections_total"); v != 0 {
		t.Fatalf("ejections metric %v", v)
	}
	if fx.Requests() != 30 {
		t.Fatalf("engine saw %d requests, want 30", fx.Requests())
	}
}

func TestEjectionAndReturn(t *testing.T) {
	bad, ub := startFixture(t)
	bad.SetBehavior(openaifixture.Behavior{Fault: openaifixture.FaultStatus, Status: 500})
	good, ug := startFixture(t)
	h := newHarness(t, func(c *Config) { c.EjectAfter = 3; c.EjectBackoff = 300 * time.Millisecond },
		inst(t, "a", "n1", testModel, ub), inst(t, "b", "n2", testModel, ug))
	// A 500 is the engine's own answer: passed through, but a fault.
	for i := 0; i < 3; i++ {
		if status, _, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); status != 500 {
			t.Fatalf("request %d: status %d, want the engine's 500", i, status)
		}
	}
	if d := h.rt.state.EjectedFor("a"); d <= 0 {
		t.Fatal("three consecutive 5xx did not eject the instance")
	}
	ejectedAt := time.Now()
	for i := 0; i < 5; i++ {
		if status, _, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); status != 200 {
			t.Fatalf("while a is ejected: status %d", status)
		}
	}
	if bad.Requests() != 3 || good.Finished() != 5 {
		t.Fatalf("bad saw %d (want 3), good finished %d (want 5)", bad.Requests(), good.Finished())
	}
	// After the back-off the instance gets traffic again; healthy now, it
	// keeps it.
	bad.SetBehavior(openaifixture.Behavior{})
	waitFor(t, 2*time.Second, "ejection to end", func() bool { return h.rt.state.EjectedFor("a") == 0 })
	t.Logf("instance returned after %v", time.Since(ejectedAt).Round(time.Millisecond))
	if status, _, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); status != 200 || bad.Finished() != 1 {
		t.Fatalf("after back-off: status %d, returned instance finished %d", status, bad.Finished())
	}
	if v := h.metricSum("llorch_router_ejections_total"); v != 1 {
		t.Errorf("ejections metric %v, want 1", v)
	}

	// Connect failures eject too, and a fault right after return
	// re-ejects at once for twice as long.
	h2 := newHarness(t, func(c *Config) { c.EjectAfter = 2; c.EjectBackoff = 100 * time.Millisecond; c.Retries = 0 },
		inst(t, "a", "n1", testModel, closedPortURL(t)))
	for i := 0; i < 2; i++ {
		if status, _, body := h2.do("POST", "/v1/chat/completions", chatBody(testModel, false)); status != 503 || decodeErr(t, body).Code != CodeReplicaExhausted {
			t.Fatalf("dead instance: %d %s", status, body)
		}
	}
	status, _, body := h2.do("POST", "/v1/chat/completions", chatBody(testModel, false))
	if e := decodeErr(t, body); status != 503 || e.Code != CodePoolUnavailable || e.RetryAfterMs <= 0 {
		t.Fatalf("all instances ejected: %d %+v", status, e)
	}
	waitFor(t, time.Second, "first ejection to end", func() bool { return h2.rt.state.EjectedFor("a") == 0 })
	h2.do("POST", "/v1/chat/completions", chatBody(testModel, false))
	if d := h2.rt.state.EjectedFor("a"); d <= 100*time.Millisecond {
		t.Fatalf("a fault on probation: ejected for %v, want the doubled 200ms", d)
	}
}

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

func TestModelsAndHealth(t *testing.T) {
	_, u := startFixture(t)
	a := inst(t, "a", "n1", "m-one", u)
	b := inst(t, "b", "n1", "m-two", u)
	c := inst(t, "c", "n2", "m-three", u)
	c.Draining = true
	h := newHarness(t, nil, a, b, c)
	status, _, body := h.do("GET", "/v1/models", "")
	var list modelList
	if status != 200 || json.Unmarshal([]byte(body), &list) != nil || list.Object != "list" || len(list.Data) != 2 ||
		list.Data[0].ID != "m-one" || list.Data[1].ID != "m-two" || list.Data[0].Object != "model" {
		t.Fatalf("models: %d %s", status, body)
	}
	if status, _, _ := h.do("GET", "/v1/models/m-two", ""); status != 200 {
		t.Errorf("GET /v1/models/m-two: %d", status)
	}
	if status, _, body := h.do("GET", "/v1/models/m-three", ""); status != 404 || decodeErr(t, body).Code != CodeModelNotAvailable {
		t.Errorf("GET a draining model: %d %s", status, body)
	}
	// Draining only: 503, not 404 — the model exists but cannot take work.
	status, _, body = h.do("POST", "/v1/chat/completions", chatBody("m-three", false))
	if e := decodeErr(t, body); status != 503 || e.Code != CodePoolUnavailable || !e.Retriable {
		t.Errorf("draining-only model: %d %+v", status, e)
	}

	status, _, body = h.do("GET", "/healthz", "")
	var hb healthBody
	if status != 200 || json.Unmarshal([]byte(body), &hb) != nil || hb.Status != "ok" || hb.Instances != 3 || hb.SnapshotAgeMs < 0 {
		t.Fatalf("healthz: %d %s", status, body)
	}
	h.rt.cfg.DegradedAfter = 0
	time.Sleep(2 * time.Millisecond)
	if status, _, body = h.do("GET", "/healthz", ""); status != 200 || !strings.Contains(body, `"degraded"`) {
		t.Fatalf("healthz with an old snapshot: %d %s", status, body)
	}

	// The view follows the source.
	h.src.Set(a)
	waitFor(t, time.Second, "view to follow the source", func() bool { return len(h.rt.Snapshot().Instances) == 1 })
}

func TestMetricsExposed(t *testing.T) {
	_, u := startFixture(t)
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
	h.do("POST", "/v1/chat/completions", chatBody("invented-model", false))
	_, _, body := h.do("GET", "/metrics", "")
	for _, want := range []string{
		`llorch_router_requests_total{model="tiny",path="/v1/chat/completions",status="200"} 1`,
		`llorch_router_requests_total{model="_unknown",path="/v1/chat/completions",status="404"} 1`,
		`llorch_router_snapshot_age_seconds`, `llorch_router_instances 1`, `llorch_router_ejections_total 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, "invented-model") {
		t.Error("a client-chosen model name became a label value")
	}
}

// closedPortURL is an address nothing listens on.
func closedPortURL(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

var _ = http.StatusOK
