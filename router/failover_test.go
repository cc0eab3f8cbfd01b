package router

import (
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/openaifixture"
)

func TestRetryBeforeFirstByte(t *testing.T) {
	dead := closedPortURL(t)
	// firstByte is the first-byte timeout for the "no first byte" case: a
	// healthy fixture answers a local request far within it even on a
	// loaded 2-core machine, and the stalled one waits 30× longer (its
	// pause ends when the router cancels).
	const firstByte = 2 * time.Second
	for _, tc := range []struct {
		name    string
		fault   openaifixture.Behavior
		streams bool // only streams have a first-byte timeout
	}{
		{"close", openaifixture.Behavior{Fault: openaifixture.FaultCloseBeforeFirstByte}, false},
		{"503", openaifixture.Behavior{Fault: openaifixture.FaultStatus, Status: 503}, false},
		{"no first byte", openaifixture.Behavior{FirstByteDelay: 30 * firstByte}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad, ub := startFixture(t)
			bad.SetBehavior(tc.fault)
			good, ug := startFixture(t)
			// "a" sorts first, so it is tried first while loads are equal;
			// the dead port sits in between.
			h := newHarness(t, func(c *Config) { c.FirstByteTimeout = firstByte; c.EjectAfter = 1000 },
				inst(t, "a", "n1", testModel, ub), inst(t, "b", "n2", testModel, dead), inst(t, "c", "n3", testModel, ug))
			n := 10
			if tc.streams {
				n = 3 // each waits out the first-byte timeout once
			}
			for i := 0; i < n; i++ {
				stream := tc.streams || i%2 == 0
				status, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, stream))
				if status != 200 || !strings.Contains(body, "tok7") {
					t.Fatalf("request %d: status %d: %s", i, status, body)
				}
			}
			if bad.Requests() != int64(n) || good.Finished() != int64(n) {
				t.Fatalf("bad saw %d, good finished %d; want %d each", bad.Requests(), good.Finished(), n)
			}
			if r := h.metricSum("llorch_router_retries_total"); r != float64(2*n) {
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
