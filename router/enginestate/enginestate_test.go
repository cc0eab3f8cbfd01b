package enginestate

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llorch/llorch/registry"
)

// fakeLlama answers /slots and /metrics with llama-server's recorded pages
// (engine/testdata), requiring the engine token; down makes it answer 500.
type fakeLlama struct {
	down    atomic.Bool
	delay   time.Duration
	cur     atomic.Int64 // polls in flight
	maxSeen atomic.Int64
	polls   atomic.Int64
	badAuth atomic.Int64
}

func (f *fakeLlama) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer engine-tok" {
		f.badAuth.Add(1)
		http.Error(w, `{"error":{"code":401}}`, 401)
		return
	}
	n := f.cur.Add(1)
	defer f.cur.Add(-1)
	for {
		m := f.maxSeen.Load()
		if n <= m || f.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	f.polls.Add(1)
	time.Sleep(f.delay)
	if f.down.Load() {
		http.Error(w, "down", 500)
		return
	}
	file := map[string]string{"/slots": "slots-busy.json", "/metrics": "metrics-busy.txt"}[r.URL.Path]
	b, err := os.ReadFile("../../engine/testdata/llamacpp/" + file)
	if file == "" || err != nil {
		http.NotFound(w, r)
		return
	}
	w.Write(b)
}

type local struct{ inFlight int }

func (l local) InFlight(string) int  { return l.inFlight }
func (l local) Started(string) int64 { return 0 }

func instanceOf(t *testing.T, id, url string) registry.Instance {
	host, port, _ := net.SplitHostPort(url[len("http://"):])
	p, _ := strconv.Atoi(port)
	return registry.Instance{ID: id, Address: host, Port: p, Model: "tiny", Engine: "llamacpp", Slots: 2}
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(time.Millisecond)
	}
}

// An engine whose load reports stop is unknown after the stale limit,
// never idle; a fresh report carries the engine's figures and the router's
// in-flight count at the time.
func TestReportsStaleAfterLimit(t *testing.T) {
	f := &fakeLlama{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	inst := instanceOf(t, "a", srv.URL)
	cfg := Config{Interval: 10 * time.Millisecond, StaleAfter: 60 * time.Millisecond, Token: "engine-tok"}
	var reports atomic.Int64
	cfg.OnReport = func(registry.Instance, Report) { reports.Add(1) }
	p := New(cfg, func() []registry.Instance { return []registry.Instance{inst} }, local{inFlight: 1})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	if s := p.Get("a"); s.Freshness != Unknown {
		t.Errorf("before any report: %v, want unknown", s.Freshness)
	}
	waitFor(t, 2*time.Second, "first report", func() bool { return p.Get("a").Freshness == Fresh })
	s := p.Get("a")
	if l := s.Report.Load; l.SlotsBusy != 2 || l.QueueLen != 1 || s.Report.Others != 2 || !l.Cache.Counters {
		t.Errorf("report %+v, want 2 busy, 1 queued, 2 of those 3 not this router's, cache counters", s.Report)
	}
	if f.badAuth.Load() != 0 || reports.Load() == 0 {
		t.Errorf("polls without the engine token: %d; reports: %d", f.badAuth.Load(), reports.Load())
	}

	f.down.Store(true)
	waitFor(t, cfg.StaleAfter+time.Second, "stale after reports stop", func() bool { return p.Get("a").Freshness == Stale })
	s = p.Get("a")
	// (That it is not stale before the limit is TestFreshnessBoundary's.)
	if s.LastError == "" || s.Report.Load.SlotsBusy != 2 {
		t.Errorf("stale state %+v: want the poll error and the last figures kept (not zeroed to idle)", s)
	}
	f.down.Store(false)
	waitFor(t, 2*time.Second, "fresh again", func() bool { return p.Get("a").Freshness == Fresh })
}

// The stale limit is exact: a report is fresh up to StaleAfter old and
// stale past it.
func TestFreshnessBoundary(t *testing.T) {
	p := New(Config{Interval: time.Second}, func() []registry.Instance { return nil }, nil)
	at := time.Unix(1000, 0)
	p.m["a"] = &entry{have: true, last: Report{At: at}}
	p.m["a"].last.Load.Known = true
	p.now = func() time.Time { return at.Add(p.StaleAfter()) }
	if f := p.Get("a").Freshness; f != Fresh {
		t.Errorf("at the limit: %v", f)
	}
	p.now = func() time.Time { return at.Add(p.StaleAfter() + time.Nanosecond) }
	if f := p.Get("a").Freshness; f != Stale {
		t.Errorf("past the limit: %v", f)
	}
	if p.StaleAfter() != DefaultStaleAfter*time.Second {
		t.Errorf("default stale limit %v", p.StaleAfter())
	}
}

// Polls are bounded in number at once, a slow engine is polled once at a
// time, and instances that leave the snapshot are forgotten.
func TestBoundedConcurrencyAndPrune(t *testing.T) {
	f := &fakeLlama{delay: 30 * time.Millisecond}
	srv := httptest.NewServer(f)
	defer srv.Close()
	var mu sync.Mutex
	var insts []registry.Instance
	for i := range 10 {
		insts = append(insts, instanceOf(t, "i"+strconv.Itoa(i), srv.URL))
	}
	p := New(Config{Interval: 5 * time.Millisecond, StaleAfter: time.Second, Concurrency: 3, Token: "engine-tok"}, func() []registry.Instance {
		mu.Lock()
		defer mu.Unlock()
		return insts
	}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	waitFor(t, 5*time.Second, "every instance reported", func() bool {
		for _, in := range insts {
			if p.Get(in.ID).Freshness != Fresh {
				return false
			}
		}
		return true
	})
	mu.Lock()
	insts = insts[:1]
	mu.Unlock()
	waitFor(t, 5*time.Second, "departed instances forgotten", func() bool {
		p.mu.RLock()
		defer p.mu.RUnlock()
		return len(p.m) == 1
	})
	cancel()
	<-done
	if m := f.maxSeen.Load(); m > 3 {
		t.Errorf("%d polls at once, want at most 3", m)
	}
	p.mu.RLock()
	for id, e := range p.m {
		if e.polling {
			t.Errorf("Run returned with a poll of %s in flight", id)
		}
	}
	p.mu.RUnlock()
}

// Others counts the engine's queue with its busy slots: this router's
// requests may be the ones waiting there, and taking them off the busy
// slots alone would hide the other routers' requests in those slots. The
// engine here has 2 busy slots and 1 request queued.
func TestOthersCountsTheQueue(t *testing.T) {
	srv := httptest.NewServer(&fakeLlama{})
	defer srv.Close()
	inst := instanceOf(t, "a", srv.URL)
	for _, c := range []struct{ mine, others int }{
		{0, 3}, // all three are other routers'
		{1, 2}, // ours waits in the queue: both slots are others'
		{3, 0},
		{4, 0}, // more of ours than the engine holds (one is on its way): none, not fewer
	} {
		p := New(Config{Interval: 10 * time.Millisecond, StaleAfter: time.Second, Token: "engine-tok"},
			func() []registry.Instance { return []registry.Instance{inst} }, local{inFlight: c.mine})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { p.Run(ctx); close(done) }()
		waitFor(t, 2*time.Second, "a report", func() bool { return p.Get("a").Freshness == Fresh })
		cancel()
		<-done
		if r := p.Get("a").Report; r.Others != c.others || r.OthersHeld != c.others {
			t.Errorf("%d of ours in flight: others %d (held %d), want %d", c.mine, r.Others, r.OthersHeld, c.others)
		}
	}
}

// Poll intervals vary by up to a tenth either way, so two routers polling
// the same engines do not keep one phase to each other (in step, they
// would take their reports at the same moment and claim the same free
// slot together).
func TestIntervalsAreJittered(t *testing.T) {
	const d = 200 * time.Millisecond
	seen := map[time.Duration]bool{}
	for range 100 {
		j := jittered(d)
		if j < d-d/10 || j > d+d/10 {
			t.Fatalf("interval %v outside %v ± a tenth", j, d)
		}
		seen[j/time.Millisecond] = true
	}
	if len(seen) < 10 {
		t.Errorf("100 intervals took only %d distinct millisecond values", len(seen))
	}
}
