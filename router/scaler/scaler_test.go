package scaler_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llorch/llorch/internal/nomadfake"
	"github.com/llorch/llorch/internal/openaifixture"
	"github.com/llorch/llorch/router/scaler"
)

// A request for a model whose pool is at zero waits in its queue while
// the router scales the pool to 1 through Nomad's scale API (with a
// reason), is answered once the engine passes in Consul, and the pool goes
// back to zero after its idle time without requests. A model no pool
// serves still gets 404 at once.
func TestWakeFromZeroThenIdleDown(t *testing.T) {
	c := newCluster(t, 0, 2, "1500ms")
	r := c.router("router-a", nil)
	if got := modelState(t, r, model); got != "stopped" {
		t.Fatalf("/v1/models state before any request = %q, want stopped", got)
	}

	start := time.Now()
	status, body := r.chat(t, model)
	took := time.Since(start)
	if status != 200 {
		t.Fatalf("request to a pool at zero: %d %s", status, body)
	}
	scales := c.nomad.Scales()
	if len(scales) != 1 || scales[0].From != 0 || scales[0].To != 1 || scales[0].Meta["llorch_reason"] != "wake" || !strings.Contains(scales[0].Message, "at 0") {
		t.Fatalf("scale requests after the wake: %+v", scales)
	}
	t.Logf("request to a pool at zero answered in %v (scale %v after the request, engine announced at once by the fake)", took.Round(time.Millisecond), scales[0].At.Sub(start).Round(time.Millisecond))
	// The scaler records its action once Nomad has answered the scale
	// call, which can be after the fake's engine already answered.
	waitFor(t, 5*time.Second, "llorch_pool_desired 1 and one wake action", func() bool {
		return r.metric(t, "llorch_pool_desired", map[string]string{"pool": poolID}) == 1 &&
			r.metric(t, "llorch_pool_scale_actions_total", map[string]string{"pool": poolID, "reason": "wake"}) == 1
	})
	if got := modelState(t, r, model); got != "loaded" {
		t.Fatalf("/v1/models state after the wake = %q, want loaded", got)
	}
	lastEnd := time.Now()

	status, body = r.chat(t, "no-such-model")
	if status != 404 || !strings.Contains(body, "MODEL_NOT_AVAILABLE") {
		t.Fatalf("unknown model: %d %s", status, body)
	}

	// Idle 1.5s, down-cooldown 0.5s, ticks of 0.1s: down to min after
	// 1.5s and well within 1.5s + 5 ticks + margin for a loaded machine.
	waitFor(t, 6*time.Second, "idle scale-down", func() bool { return c.nomad.Count("default", poolID) == 0 })
	scales = c.nomad.Scales()
	down := scales[len(scales)-1]
	if len(scales) != 2 || down.Meta["llorch_reason"] != "idle" || down.To != 0 {
		t.Fatalf("scale requests: %+v", scales)
	}
	if idleFor := down.At.Sub(lastEnd); idleFor < 1500*time.Millisecond {
		t.Fatalf("scaled down %v after the last request, before the 1.5s idle time", idleFor)
	}
	t.Logf("idle → scaled down %v after the last request (idle 1.5s)", down.At.Sub(lastEnd).Round(time.Millisecond))
	waitFor(t, 2*time.Second, "/v2/nodes shows the scale-down", func() bool {
		_, nodes := r.do(t, "GET", "/v2/nodes", "")
		return strings.Contains(nodes, `"last_action":"scaled 1→0 (idle)"`) && strings.Contains(nodes, `"pool":"tiny-pool"`)
	})
	waitFor(t, 5*time.Second, "state stopped", func() bool { return modelState(t, r, model) == "stopped" })
	if c.nomad.Count("default", "fixed") != 1 {
		t.Fatal("the fixed-size job was scaled")
	}
}

// Two routers: one decides per pool (Consul lock), the other's traffic
// keeps the pool up (shared demand), a wake from both at once scales once,
// and the lock moves when its holder leaves.
func TestTwoRoutersDoNotFight(t *testing.T) {
	c := newCluster(t, 0, 2, "1s")
	a := c.router("router-a", nil)
	b := c.router("router-b", nil)
	waitFor(t, 5*time.Second, "one leader", func() bool { return a.pool(t).Leader != b.pool(t).Leader })
	leader, other := a, b
	if b.pool(t).Leader {
		leader, other = b, a
	}

	// Both wake at once: Nomad gets one 0→1.
	var wg sync.WaitGroup
	for _, r := range []*aRouter{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if status, body := r.chat(t, model); status != 200 {
				t.Errorf("wake: %d %s", status, body)
			}
		}()
	}
	wg.Wait()
	if s := c.nomad.Scales(); len(s) != 1 || s[0].To != 1 {
		t.Fatalf("two routers waking the pool made %d scale changes: %+v", len(s), s)
	}

	// Traffic only through the router that does not decide, for 3× idle:
	// the decider sees it through Consul and keeps the pool.
	until := time.Now().Add(3 * time.Second)
	var lastEnd time.Time
	for time.Now().Before(until) {
		if status, body := other.chat(t, model); status != 200 {
			t.Fatalf("steady traffic: %d %s", status, body)
		}
		lastEnd = time.Now()
		time.Sleep(200 * time.Millisecond)
	}
	if s := c.nomad.Scales(); len(s) != 1 {
		t.Fatalf("the pool was scaled while the other router had traffic: %+v", s)
	}
	waitFor(t, 6*time.Second, "idle scale-down", func() bool { return c.nomad.Count("default", poolID) == 0 })
	s := c.nomad.Scales()
	if len(s) != 2 || s[1].Meta["llorch_reason"] != "idle" || s[1].Meta["llorch_router"] != leaderName(a, leader) {
		t.Fatalf("scale changes: %+v", s)
	}
	if s[1].At.Sub(lastEnd) < time.Second {
		t.Fatalf("scaled down %v after the last request (idle 1s)", s[1].At.Sub(lastEnd))
	}

	// The decider leaves (its session is destroyed): the other takes the lock.
	leader.stop()
	waitFor(t, 5*time.Second, "lock moves to the remaining router", func() bool { return other.pool(t).Leader })
}

// Requests that keep queueing with the pool's instance busy scale it up
// after the sustain time, one step per cooldown, never past max.
func TestQueueingScalesUpToMax(t *testing.T) {
	c := newCluster(t, 1, 2, "1m")
	c.behavior = openaifixture.Behavior{Tokens: 4, TokenDelay: 250 * time.Millisecond}
	c.onScale(nomadfake.Scale{To: 1}) // min 1: one engine runs from the start
	r := c.router("router-a", nil)
	waitFor(t, 5*time.Second, "engine ready", func() bool { _, ready, _ := r.rt.ModelLoad(model); return ready == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if status, body := r.chat(t, model); status != 200 {
					t.Errorf("under load: %d %s", status, body)
					return
				}
			}
		}()
	}
	waitFor(t, 6*time.Second, "scale-up", func() bool { return c.nomad.Count("default", poolID) == 2 })
	up := c.nomad.Scales()[0]
	if up.Meta["llorch_reason"] != "queueing" && up.Meta["llorch_reason"] != "busy" {
		t.Fatalf("scale-up reason: %+v", up)
	}
	time.Sleep(2 * time.Second) // past the up-cooldown: pressure remains, max holds
	cancel()
	wg.Wait()
	if s := c.nomad.Scales(); len(s) != 1 || c.nomad.Requests("PUT scale") != 1 {
		t.Fatalf("scale requests past max: %+v (%d PUTs)", s, c.nomad.Requests("PUT scale"))
	}
	t.Logf("scaled 1→2 (%s): %s", up.Meta["llorch_reason"], up.Message)
}

// docs/monitoring.md lists exactly the scaler's series.
func TestMonitoringDocListsPoolMetrics(t *testing.T) {
	doc, err := os.ReadFile("../../docs/monitoring.md")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, l := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(l, "| `llorch_pool_") {
			listed[strings.Split(l, "`")[1]] = true
		}
	}
	reg := prometheus.NewRegistry()
	sc, err := scaler.New(scaler.Config{Nomad: nomadfake.Start(t).Client(t, "", "default"), Load: noLoad{}, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	_ = sc
	for _, n := range scaler.MetricNames {
		if !listed[n] {
			t.Errorf("%s is exported but not in docs/monitoring.md", n)
		}
		delete(listed, n)
	}
	for n := range listed {
		t.Errorf("docs/monitoring.md lists %s, which the scaler does not export", n)
	}
}

type noLoad struct{}

func (noLoad) ModelLoad(string) (int, int, int) { return 0, 0, 0 }
