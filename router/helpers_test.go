package router

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llorch/llorch/internal/openaifixture"
	"github.com/llorch/llorch/registry"
)

const (
	clientToken = "client-token-0123456789abcdef0123456789"
	engineToken = "engine-token-fedcba9876543210"
	testModel   = "tiny"
)

// inst describes a fixture (or any URL) as a registry instance.
func inst(t testing.TB, id, node, model, rawURL string) registry.Instance {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())
	return registry.Instance{ID: id, Service: registry.DefaultServiceName, Address: u.Hostname(), Port: port,
		Model: model, Engine: "fixture", NodeID: node, Health: registry.HealthPassing,
		APIs: []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}}
}

type harness struct {
	t   testing.TB
	rt  *Router
	srv *httptest.Server
	src *registry.Static
	reg *prometheus.Registry
	cl  *http.Client
}

func testConfig() Config {
	c := DefaultConfig()
	c.APIToken = clientToken
	c.EngineToken = engineToken
	c.EjectBackoff = 300 * time.Millisecond
	c.EjectBackoffMax = 2 * time.Second
	c.ConnectTimeout = time.Second
	c.FirstByteTimeout = 5 * time.Second
	c.IdleStreamTimeout = 5 * time.Second
	return c
}

func newHarness(t testing.TB, mut func(*Config), insts ...registry.Instance) *harness {
	t.Helper()
	cfg := testConfig()
	if mut != nil {
		mut(&cfg)
	}
	src := registry.NewStatic(insts...)
	reg := prometheus.NewRegistry()
	log := hclog.New(&hclog.LoggerOptions{Name: "router", Level: hclog.Warn, Output: testWriter{t}})
	rt, err := New(cfg, src, nil, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = rt.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	srv := httptest.NewServer(rt.Handler())
	t.Cleanup(srv.Close)
	waitFor(t, 5*time.Second, "first snapshot", rt.Ready)
	return &harness{t: t, rt: rt, srv: srv, src: src, reg: reg,
		cl: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512}}}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func (h *harness) req(method, path, body string, hdr ...string) *http.Request {
	h.t.Helper()
	r, err := http.NewRequest(method, h.srv.URL+path, strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	r.Header.Set("Authorization", "Bearer "+clientToken)
	r.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			r.Header.Del(hdr[i])
		} else {
			r.Header.Set(hdr[i], hdr[i+1])
		}
	}
	return r
}

// do sends a request and returns status, headers and the whole body.
func (h *harness) do(method, path, body string, hdr ...string) (int, http.Header, string) {
	h.t.Helper()
	resp, err := h.cl.Do(h.req(method, path, body, hdr...))
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func chatBody(model string, stream bool) string {
	return `{"model":"` + model + `","stream":` + strconv.FormatBool(stream) + `,"messages":[{"role":"user","content":"hi"}]}`
}

// sseEvent is one parsed SSE event.
type sseEvent struct{ event, data string }

// readSSE parses a whole SSE body into events.
func readSSE(t testing.TB, r io.Reader) []sseEvent {
	t.Helper()
	var out []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur != (sseEvent{}) {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "event: "):
			cur.event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			cur.data += strings.TrimPrefix(line, "data: ")
		}
	}
	if cur != (sseEvent{}) {
		out = append(out, cur)
	}
	return out
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// metricSum adds up every series of a counter or gauge family.
func (h *harness) metricSum(name string) float64 {
	h.t.Helper()
	fams, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

func startFixture(t testing.TB) (*openaifixture.Server, string) {
	fx, hs := openaifixture.Start(t, testModel)
	return fx, hs.URL
}

func staticEmpty() *registry.Static { return registry.NewStatic() }

// wireError is the error envelope's member as a client reads it.
type wireError struct {
	Message      string `json:"message"`
	Type         string `json:"type"`
	Code         string `json:"code"`
	Param        string `json:"param"`
	Retriable    bool   `json:"retriable"`
	RetryAfterMs int64  `json:"retry_after_ms"`
}
