package router

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llorch/llorch/internal/openaifixture"
	"github.com/llorch/llorch/registry"
)

// A non-streamed answer sends its headers only when it is done: one that
// takes longer than the first-byte timeout succeeds, is not retried and
// ejects nothing.
func TestNonStreamingLongerThanFirstByteTimeout(t *testing.T) {
	slow, us := startFixture(t)
	const firstByte = 200 * time.Millisecond
	slow.SetBehavior(openaifixture.Behavior{FirstByteDelay: 5 * firstByte})
	other, uo := startFixture(t)
	h := newHarness(t, func(c *Config) {
		c.FirstByteTimeout = firstByte
		c.EjectAfter = 1
		c.SchedulerProfile = "least-in-flight"
	},
		inst(t, "a", "n1", testModel, us), inst(t, "b", "n2", testModel, uo))
	for i := 0; i < 2; i++ {
		status, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
		if status != 200 || !strings.Contains(body, "tok7") {
			t.Fatalf("request %d: %d %s", i, status, body)
		}
	}
	if slow.Finished() != 2 || other.Requests() != 0 {
		t.Fatalf("slow finished %d (want 2), other saw %d (want 0: no retry)", slow.Finished(), other.Requests())
	}
	if h.rt.state.EjectedFor("a") != 0 || h.metricSum("llorch_router_retries_total") != 0 || h.metricSum("llorch_router_ejections_total") != 0 {
		t.Fatal("a slow non-streamed answer counted as a fault")
	}
}

// Past the model's generation timeout a non-streamed request gets 504
// GENERATION_TIMEOUT: not re-run elsewhere, and the instance not blamed.
func TestGenerationTimeoutPerModel(t *testing.T) {
	slow, us := startFixture(t)
	slow.SetBehavior(openaifixture.Behavior{FirstByteDelay: time.Minute})
	other, uo := startFixture(t)
	h := newHarness(t, func(c *Config) {
		c.GenerationTimeoutPerModel = testModel + "=300ms"
		c.EjectAfter = 1
		c.SchedulerProfile = "least-in-flight"
	}, inst(t, "a", "n1", testModel, us), inst(t, "b", "n2", testModel, uo))
	status, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
	if e := decodeErr(t, body); status != 504 || e.Code != CodeGenerationTimeout || e.Retriable {
		t.Fatalf("%d %s", status, body)
	}
	if other.Requests() != 0 || h.rt.state.EjectedFor("a") != 0 {
		t.Fatalf("re-run elsewhere (%d) or ejected (%v)", other.Requests(), h.rt.state.EjectedFor("a"))
	}
	waitFor(t, 5*time.Second, "the abandoned request cancelled at the engine", func() bool { return slow.Canceled() == 1 })
}

// An engine's 429 sends the request to another instance, and the busy one
// gets nothing until its Retry-After.
func TestEngine429GoesToAnotherInstance(t *testing.T) {
	busy, ub := startFixture(t)
	busy.SetBehavior(openaifixture.Behavior{Fault: openaifixture.FaultStatus, Status: 429, RetryAfter: "30"})
	free, uf := startFixture(t)
	h := newHarness(t, func(c *Config) { c.SchedulerProfile = "least-in-flight" },
		inst(t, "a", "n1", testModel, ub), inst(t, "b", "n2", testModel, uf))
	for i := 0; i < 3; i++ {
		if status, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, i == 1)); status != 200 {
			t.Fatalf("request %d: %d %s", i, status, body)
		}
	}
	if busy.Requests() != 1 || free.Finished() != 3 {
		t.Fatalf("busy saw %d (want 1: out until Retry-After), free finished %d", busy.Requests(), free.Finished())
	}
	if h.rt.state.EjectedFor("a") != 0 {
		t.Fatal("a 429 counted as a fault")
	}
}

// When every instance says "not now", the request waits in the queue and
// is served once the engine's Retry-After has passed.
func TestAllBusyQueues(t *testing.T) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Fault: openaifixture.FaultStatus, Status: 503, RetryAfter: "1", FaultTimes: 1})
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u))
	status, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
	if status != 200 || fx.Requests() != 2 {
		t.Fatalf("%d %s; engine saw %d requests (want the 503 and the retry after it)", status, body, fx.Requests())
	}
	if h.metricSum("llorch_router_admission_total") == 0 {
		t.Fatal("the request did not wait in the queue")
	}
}

// A client that reads nothing after the headers is cut after the write
// timeout, and its slot is free again.
func TestSlowReaderIsCut(t *testing.T) {
	fx, u := startFixture(t)
	// Far more than the socket buffers between router and client hold.
	fx.SetBehavior(openaifixture.Behavior{Tokens: 400000})
	const writeTimeout = 300 * time.Millisecond
	h := newHarness(t, func(c *Config) { c.ClientWriteTimeout = writeTimeout }, inst(t, "a", "n1", testModel, u))
	resp, err := h.cl.Do(h.req("POST", "/v1/chat/completions", chatBody(testModel, true)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	waitFor(t, 5*time.Second, "the request in flight", func() bool { return h.metricSum("llorch_router_in_flight_requests") == 1 })
	// Nothing reads resp.Body. The bound only catches "never": the cut
	// comes one write timeout after the buffers fill.
	waitFor(t, 60*writeTimeout, "the slow reader cut and its slot freed", func() bool {
		return h.metricSum("llorch_router_in_flight_requests") == 0 && h.rt.state.InFlight("a") == 0
	})
	waitFor(t, 5*time.Second, "the engine request cancelled", func() bool { return fx.InFlight() == 0 })
	if fx.Finished() != 0 {
		t.Fatal("the engine finished: the client was not cut")
	}
}

// neverSynced is a Source that delivers nothing until ctx ends.
type neverSynced struct{}

func (neverSynced) Watch(ctx context.Context, _ func(registry.Snapshot)) error {
	<-ctx.Done()
	return ctx.Err()
}

// Before the first snapshot: 503 NOT_SYNCED + Retry-After (not 404), and
// /healthz says so.
func TestBeforeFirstSync(t *testing.T) {
	rt, err := New(testConfig(), neverSynced{}, nil, hclog.NewNullLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = rt.Run(ctx) }()
	defer func() { cancel(); <-done }()
	srv := httptest.NewServer(rt.Handler())
	defer srv.Close()
	h := &harness{t: t, rt: rt, srv: srv, cl: srv.Client()}
	for _, c := range [][2]string{{"/v1/chat/completions", chatBody(testModel, false)}, {"/v2/tasks", taskBody(testModel, "")}} {
		status, hdr, body := h.do("POST", c[0], c[1])
		if e := decodeErr(t, body); status != 503 || e.Code != CodeNotSynced || !e.Retriable || hdr.Get("Retry-After") == "" {
			t.Fatalf("%s: %d %v %s", c[0], status, hdr, body)
		}
	}
	status, hdr, body := h.do("GET", "/healthz", "")
	if status != 503 || hdr.Get("Retry-After") == "" || !strings.Contains(body, `"synced":false`) || !strings.Contains(body, `"starting"`) {
		t.Fatalf("/healthz: %d %v %s", status, hdr, body)
	}
}

// Headers the engine's Connection header names are hop-by-hop: never
// relayed.
func TestConnectionNamedHeadersStripped(t *testing.T) {
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Connection", "X-Hop-Secret, keep-alive")
		w.Header().Set("X-Hop-Secret", "internal")
		w.Header().Set("X-End-To-End", "kept")
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	defer eng.Close()
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, eng.URL))
	status, hdr, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
	if status != 200 || hdr.Get("X-End-To-End") != "kept" || hdr.Get("X-Hop-Secret") != "" {
		t.Fatalf("%d %v", status, hdr)
	}
}

// statusWriter passes flush errors on and lets the controller reach the
// connection (write deadlines).
func TestStatusWriterFlushErrorAndUnwrap(t *testing.T) {
	sw := &statusWriter{ResponseWriter: errFlusher{httptest.NewRecorder()}}
	if err := http.NewResponseController(sw).Flush(); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("flush error lost: %v", err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		if err := http.NewResponseController(sw).SetWriteDeadline(time.Now().Add(time.Second)); err != nil {
			t.Errorf("SetWriteDeadline through statusWriter: %v", err)
		}
		sw.WriteHeader(204)
	}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

type errFlusher struct{ *httptest.ResponseRecorder }

func (errFlusher) FlushError() error { return io.ErrClosedPipe }
