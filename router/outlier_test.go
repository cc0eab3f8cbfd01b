package router

import (
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/openaifixture"
	"github.com/llorch/llorch/registry"
)

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

// ejectedCount is how many of ids are ejected now.
func (h *harness) ejectedCount(ids ...string) int {
	n := 0
	for _, id := range ids {
		if h.rt.state.EjectedFor(id) > 0 {
			n++
		}
	}
	return n
}

// Consecutive gateway failures (502 here) eject; the pool keeps being
// served by the other instance; the instance returns after its back-off;
// on probation one failure re-ejects it for twice as long.
func TestGatewayFailuresEjectAndReturn(t *testing.T) {
	bad, ub := startFixture(t)
	bad.SetBehavior(openaifixture.Behavior{Fault: openaifixture.FaultStatus, Status: 502})
	good, ug := startFixture(t)
	const backoff = 300 * time.Millisecond
	h := newHarness(t, func(c *Config) {
		c.EjectAfter = 3
		c.EjectBackoff = backoff
		c.SlowStart = 0
		c.SchedulerProfile = "least-in-flight"
	},
		inst(t, "a", "n1", testModel, ub), inst(t, "b", "n2", testModel, ug))
	for i := 0; i < 3; i++ {
		if status, _, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); status != 200 {
			t.Fatalf("request %d: status %d, want b's answer after a's 502", i, status)
		}
	}
	if d := h.rt.state.EjectedFor("a"); d <= 0 {
		t.Fatal("three consecutive 502s did not eject the instance")
	}
	for i := 0; i < 5; i++ {
		if status, _, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); status != 200 {
			t.Fatalf("while a is ejected: status %d", status)
		}
	}
	if bad.Requests() != 3 || good.Finished() != 8 {
		t.Fatalf("bad saw %d (want 3), good finished %d (want 8)", bad.Requests(), good.Finished())
	}
	// The wait is the configured back-off; the bound only catches "never".
	waitFor(t, 20*backoff, "ejection to end", func() bool { return h.rt.state.EjectedFor("a") == 0 })
	// On probation: one more failure re-ejects at once, for twice as long.
	if status, _, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); status != 200 {
		t.Fatalf("after back-off: %d", status)
	}
	if d := h.rt.state.EjectedFor("a"); d <= backoff {
		t.Fatalf("a failure on probation: ejected for %v, want the doubled %v", d, 2*backoff)
	}
	if v := h.metricSum("llorch_router_ejections_total"); v != 2 {
		t.Errorf("ejections metric %v, want 2", v)
	}
	// Healthy again: after the back-off it takes traffic and keeps it.
	bad.SetBehavior(openaifixture.Behavior{})
	waitFor(t, 40*backoff, "second ejection to end", func() bool { return h.rt.state.EjectedFor("a") == 0 })
	for i := 0; i < 4; i++ {
		if status, _, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); status != 200 {
			t.Fatalf("after return: %d", status)
		}
	}
	if bad.Finished() == 0 || h.rt.state.EjectedFor("a") != 0 {
		t.Fatalf("the returned instance finished %d answers, ejected for %v", bad.Finished(), h.rt.state.EjectedFor("a"))
	}
}

// The max-ejection share: a model's only instance is never ejected (its
// connect failures answer REPLICA_EXHAUSTED, not POOL_UNAVAILABLE), and
// of four failing instances at most two are out at once.
func TestMaxEjectionShare(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.EjectAfter = 1; c.Retries = 0 }, inst(t, "a", "n1", testModel, closedPortURL(t)))
	for i := 0; i < 5; i++ {
		if status, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); status != 503 || decodeErr(t, body).Code != CodeReplicaExhausted {
			t.Fatalf("request %d: %d %s", i, status, body)
		}
	}
	if d := h.rt.state.EjectedFor("a"); d != 0 {
		t.Fatalf("the only instance was ejected for %v: the router emptied the pool", d)
	}

	var insts []registry.Instance
	var ids []string
	for _, id := range []string{"a", "b", "c", "d"} {
		fx, u := startFixture(t)
		fx.SetBehavior(openaifixture.Behavior{Fault: openaifixture.FaultStatus, Status: 502})
		insts = append(insts, inst(t, id, "n-"+id, testModel, u))
		ids = append(ids, id)
	}
	h4 := newHarness(t, func(c *Config) { c.EjectAfter = 1; c.EjectBackoff = time.Minute; c.EjectBackoffMax = time.Minute }, insts...)
	for i := 0; i < 12; i++ {
		h4.do("POST", "/v1/chat/completions", chatBody(testModel, false))
		if n := h4.ejectedCount(ids...); n > 2 {
			t.Fatalf("after request %d, %d of 4 instances are ejected; the share allows 2", i, n)
		}
	}
	if n := h4.ejectedCount(ids...); n != 2 {
		t.Fatalf("%d of 4 failing instances ejected, want the share's 2", n)
	}
}

// 500s are the engine's own answers: three in a row do not eject; only the
// success-rate rule does, once enough answers were seen.
func TestServerErrorsEjectOnlyBySuccessRate(t *testing.T) {
	bad, ub := startFixture(t)
	bad.SetBehavior(openaifixture.Behavior{Fault: openaifixture.FaultStatus, Status: 500})
	_, ug := startFixture(t)
	const minReqs = 10
	h := newHarness(t, func(c *Config) {
		c.EjectAfter = 3
		c.EjectSuccessRateMinReqs = minReqs
		c.SchedulerProfile = "least-in-flight"
		// Long enough that the ejection is still on when it is checked,
		// however slow a loaded machine is.
		c.EjectBackoff, c.EjectBackoffMax = time.Minute, time.Minute
	},
		inst(t, "a", "n1", testModel, ub), inst(t, "b", "n2", testModel, ug))
	for i := 0; i < minReqs-1; i++ {
		// Least-in-flight with nothing in flight: "a" first every time.
		if status, _, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); status != 500 {
			t.Fatalf("request %d: %d, want the engine's 500 passed through (no retry)", i, status)
		}
	}
	if d := h.rt.state.EjectedFor("a"); d != 0 {
		t.Fatalf("%d 500s ejected before the success-rate rule had %d answers", minReqs-1, minReqs)
	}
	h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
	if d := h.rt.state.EjectedFor("a"); d <= 0 {
		t.Fatalf("success rate 0%% over %d answers did not eject", minReqs)
	}
	if bad.Requests() != minReqs {
		t.Fatalf("500s were retried: the engine saw %d requests for %d", bad.Requests(), minReqs)
	}
}

// A prompt that makes the engine answer 500, sent over and over, never
// ejects more than the max share of the pool, and every other request
// keeps being served.
func TestPoisonPromptNeverEjectsMoreThanTheShare(t *testing.T) {
	var insts []registry.Instance
	var ids []string
	for _, id := range []string{"a", "b", "c", "d"} {
		fx, u := startFixture(t)
		fx.SetBehavior(openaifixture.Behavior{Fault: openaifixture.FaultStatus, Status: 500, FaultMatch: "poison"})
		insts = append(insts, inst(t, id, "n-"+id, testModel, u))
		ids = append(ids, id)
	}
	h := newHarness(t, func(c *Config) {
		c.EjectSuccessRateMinReqs = 5
		c.EjectBackoff = time.Minute
		c.EjectBackoffMax = time.Minute
	}, insts...)
	poison := `{"model":"` + testModel + `","messages":[{"role":"user","content":"poison"}]}`
	maxOut := 0
	for i := 0; i < 120; i++ {
		if status, _, _ := h.do("POST", "/v1/chat/completions", poison); status != 500 {
			t.Fatalf("poison %d: %d, want the engine's 500", i, status)
		}
		if status, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, i%2 == 0)); status != 200 {
			t.Fatalf("a normal request after poison %d: %d %s", i, status, body)
		}
		n := h.ejectedCount(ids...)
		maxOut = max(maxOut, n)
		if n > 2 {
			t.Fatalf("after poison %d, %d of 4 instances ejected; the share allows 2", i, n)
		}
	}
	t.Logf("most instances ejected at once: %d of 4", maxOut)
}

// An instance back from an ejection starts slow: it looks slowStartLoad
// requests busier to placement at its return, nothing once slow-start
// has passed; the max share does not apply before a snapshot names the
// instance's model.
func TestSlowStartAfterEjection(t *testing.T) {
	now := time.Unix(1000, 0)
	s := newLocalState(outlierConfig{consecutive: 1, base: time.Second, cap: time.Second, maxShare: 0.5, slowStart: 10 * time.Second}, nil)
	s.now = func() time.Time { return now }
	s.gatewayFailure("a")
	if s.EjectedFor("a") != time.Second || s.slowStartExtra("a") != 0 {
		t.Fatal("not ejected, or slow start before the return")
	}
	now = now.Add(time.Second) // the ejection ends: slow start begins
	if got := s.slowStartExtra("a"); got != slowStartLoad {
		t.Fatalf("at its return the instance looks %d busier, want %d", got, slowStartLoad)
	}
	now = now.Add(5 * time.Second)
	if got := s.slowStartExtra("a"); got <= 0 || got >= slowStartLoad {
		t.Fatalf("half-way through slow start: %d extra", got)
	}
	if ld := (liveLoad{s, nil, nil}).Load("a"); ld.InFlight != s.slowStartExtra("a") {
		t.Fatalf("the placer does not see the slow start: %+v", ld)
	}
	now = now.Add(5 * time.Second)
	if got := s.slowStartExtra("a"); got != 0 {
		t.Fatalf("after slow start: %d extra", got)
	}
}
