package router

import (
	"net"
	"testing"
	"time"
)

// A request waiting for its first byte from an instance that then leaves
// the registry (its node died: no RST, no answer) is retried on another
// instance at once, instead of waiting out the first-byte timeout.
func TestInstanceLeavingRegistryRetriesWaitingRequests(t *testing.T) {
	l := blackHole(t)
	_, good := startFixture(t)
	hole := inst(t, "a-hole", "n1", testModel, "http://"+l.Addr().String())
	ok := inst(t, "b-good", "n2", testModel, good)
	h := newHarness(t, func(c *Config) { c.FirstByteTimeout = 30 * time.Second }, hole, ok)
	done := make(chan int, 1)
	start := time.Now()
	// Session pinned to the black hole first (tie-break picks n1).
	go func() { st, _, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); done <- st }()
	waitFor(t, 2*time.Second, "request waiting on the black hole", func() bool { return h.rt.state.InFlight("a-hole") == 1 })
	h.src.Set(ok) // the black hole's node is gone from the registry
	select {
	case st := <-done:
		if st != 200 {
			t.Fatalf("status %d", st)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("took %v: the request waited instead of moving", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("request still waiting 10 s after its instance left the registry")
	}
}

// The same when the instance that left was the only one in the view when
// the request was placed: it is answered by the instance there now.
func TestOnlyRankedInstanceLeavingPlacesAgain(t *testing.T) {
	l := blackHole(t)
	_, good := startFixture(t)
	hole := inst(t, "a-hole", "n1", testModel, "http://"+l.Addr().String())
	ok := inst(t, "b-good", "n2", testModel, good)
	h := newHarness(t, func(c *Config) { c.FirstByteTimeout = 30 * time.Second }, hole)
	done := make(chan int, 1)
	go func() { st, _, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); done <- st }()
	waitFor(t, 5*time.Second, "request waiting on the black hole", func() bool { return h.rt.state.InFlight("a-hole") == 1 })
	h.src.Set(ok) // the hole's node failed; another instance is there now
	select {
	case st := <-done:
		if st != 200 {
			t.Fatalf("status %d, want 200 from the instance now in the view", st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("request still waiting 10 s after its instance left the registry")
	}
}

// blackHole accepts connections and never answers, as a node whose link
// went down looks to a connection already open.
func blackHole(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	return l
}
