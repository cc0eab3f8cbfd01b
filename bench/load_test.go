package main

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/openaifixture"
)

// An open-loop generator keeps its schedule when the server is slow: with
// no answer given until every one of the 100 requests (200/s for 0.5 s) has
// arrived, they all still arrive (a generator that waited for answers would
// stall here), and every latency counts the wait. Event-driven: no
// wall-clock bound on the run, only a hang guard.
func TestOpenLoopKeepsScheduleWhenServerIsSlow(t *testing.T) {
	const want = 100
	var mu sync.Mutex
	arrived := 0
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		arrived++
		if arrived == want {
			close(release)
		}
		mu.Unlock()
		select {
		case <-release:
		case <-time.After(8 * time.Second): // hang guard: the client times out at 10 s
		}
		time.Sleep(100 * time.Millisecond)
	}))
	defer srv.Close()
	// Enough connections for all of them: the client pool must not be
	// what holds requests back.
	s := openLoop(newClient(2*want), target{url: srv.URL}, 200, 500*time.Millisecond)
	select {
	case <-release:
	default:
		mu.Lock()
		t.Fatalf("only %d of %d requests reached the server before any was answered: the generator waited for answers", arrived, want)
	}
	if s.n != want || s.err != 0 {
		t.Fatalf("sent %d (errors %d), want %d without errors", s.n, s.err, want)
	}
	// The first request was answered only after the last was sent
	// (~495 ms later) plus 100 ms: its latency counts all of it.
	if p := pct(s.lat, 1); p < 500*time.Millisecond {
		t.Errorf("max latency %v, want ≥ 500 ms (schedule span + service time)", p)
	}
	if p := pct(s.lat, 0.01); p < 95*time.Millisecond {
		t.Errorf("p1 latency %v, want ≥100 ms", p)
	}
}

// Latency counts from the scheduled send time: when the server stalls
// for 300 ms, requests scheduled during the stall are charged the wait
// even though they could not be sent yet (no coordinated omission).
func TestOpenLoopChargesQueueingToScheduledTime(t *testing.T) {
	var mu sync.Mutex
	first := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if first {
			first = false
			time.Sleep(300 * time.Millisecond)
		}
		mu.Unlock()
	}))
	defer srv.Close()
	// One connection: while it is stalled, later requests queue in the client.
	s := openLoop(newClient(1), target{url: srv.URL}, 100, 300*time.Millisecond)
	if s.err != 0 {
		t.Fatalf("%d errors", s.err)
	}
	if p := pct(s.lat, 0.5); p < 120*time.Millisecond {
		t.Errorf("p50 %v: queueing behind the stall was not charged to the requests", p)
	}
}

// A stream that ends without [DONE] is counted as truncated; a complete
// one is not.
func TestStreamsCountTruncation(t *testing.T) {
	fx, hs := openaifixture.Start(t, "bench")
	cl := newClient(8)
	r := streams(cl, target{url: hs.URL}, 4)
	if r.n != 4 || r.truncated != 0 || len(r.ttfb) != 4 {
		t.Fatalf("complete streams: n %d truncated %d ttfb %d", r.n, r.truncated, len(r.ttfb))
	}
	fx.SetBehavior(openaifixture.Behavior{Tokens: 8, Fault: openaifixture.FaultDieMidStream, DieAfter: 3})
	r = streams(cl, target{url: hs.URL}, 4)
	if r.n != 4 || r.truncated != 4 {
		t.Fatalf("dying streams: n %d truncated %d, want 4 of 4", r.n, r.truncated)
	}
}

func TestAddedRatioRefusesNoise(t *testing.T) {
	us := time.Microsecond
	for _, c := range []struct {
		llorch, nginx time.Duration
		ok            bool
		want          float64
	}{
		{200 * us, 50 * us, true, 4},
		{25 * us, 50 * us, true, 0.5},
		{200 * us, 5 * us, false, 0},   // nginx under the noise floor
		{-100 * us, 50 * us, false, 0}, // llorch "faster than direct"
	} {
		got, ok, why := addedRatio(c.llorch, c.nginx)
		if ok != c.ok || got != c.want || (!ok && why == "") {
			t.Errorf("addedRatio(%v, %v) = %v, %v, %q; want %v, %v", c.llorch, c.nginx, got, ok, why, c.want, c.ok)
		}
	}
	if got := added(-5 * us); got == ms(-5*us) {
		t.Errorf("a negative added latency printed as a figure: %q", got)
	}
}
