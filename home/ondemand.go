package home

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/models/vramest"
	"github.com/llorch/llorch/router"
)

// Pool states as /v1/models shows them.
const (
	stateStopped = "stopped"
	stateLoading = "loading"
	stateLoaded  = "loaded"
	stateStop    = "stopping" // shown as stopped
)

// loader starts on-demand pools on their first request and stops them
// after their idle time or to make room for another under a memory
// budget (least recently used first, pinned never). It is the router's
// Demand in the home profile.
type loader struct {
	h     *Home
	log   hclog.Logger
	ctx   context.Context // Run's: every engine stops with it
	wg    *sync.WaitGroup
	now   func() time.Time
	pools []*managed

	// inFlight is the router's requests in flight to an instance (set by
	// Run once the router exists): a stop waits for them.
	inFlight func(id string) int

	mu     sync.Mutex
	closed bool // run has returned: nothing starts any more
}

// managed is one pool under the loader.
type managed struct {
	plan     *poolPlan
	needMiB  int
	gpu      bool // counts against the VRAM budget, else RAM
	state    string
	lastUsed time.Time
	inFlight int
	cancel   context.CancelFunc
	done     chan struct{} // closed when its engine has stopped
	ready    chan struct{} // closed when it first turns ready (per start)
	action   string
	actionAt time.Time
}

// gpuOnly engines always hold VRAM; llama.cpp and Ollama do when layers
// are offloaded.
var gpuOnly = map[string]bool{"vllm": true, "sglang": true, "tgi": true}

// newLoader sizes each pool: memory_mib, else the model's estimate. A
// budget needs a size for each pool it bounds.
func newLoader(h *Home) (*loader, error) {
	l := &loader{h: h, log: h.log.Named("on-demand"), now: time.Now}
	for i := range h.pools {
		p := &h.pools[i]
		m := &managed{plan: p, needMiB: p.MemoryMiB, gpu: gpuOnly[p.Engine] || p.GPULayers != 0, state: stateStopped}
		if m.needMiB == 0 {
			e, err := vramest.FromFile(p.Model, vramest.Params{Engine: p.Engine, Ctx: p.Ctx, Slots: p.Slots})
			switch {
			case err == nil:
				m.needMiB = e.TotalMiB()
			case l.budget(m.gpu) > 0:
				return nil, fmt.Errorf("home config: pools[%d].memory_mib: needed under a budget (no estimate: %v)", i, err)
			}
		}
		if b := l.budget(m.gpu); b > 0 && m.needMiB > b {
			return nil, fmt.Errorf("home config: pools[%d]: needs %d MiB, over the %s budget of %d MiB", i, m.needMiB, kind(m.gpu), b)
		}
		l.pools = append(l.pools, m)
	}
	pinned := map[bool]int{}
	for _, m := range l.pools {
		if m.plan.Pinned {
			pinned[m.gpu] += m.needMiB
		}
	}
	for _, gpu := range []bool{true, false} {
		if b := l.budget(gpu); b > 0 && pinned[gpu] > b {
			return nil, fmt.Errorf("home config: pinned pools need %d MiB of %s, over the budget of %d MiB", pinned[gpu], kind(gpu), b)
		}
	}
	return l, nil
}

func kind(gpu bool) string {
	if gpu {
		return "VRAM"
	}
	return "RAM"
}

func (l *loader) budget(gpu bool) int {
	if gpu {
		return l.h.cfg.VRAMBudgetMiB
	}
	return l.h.cfg.RAMBudgetMiB
}

// attach gives the loader Run's context and wait group (before the
// router can call Wake).
func (l *loader) attach(ctx context.Context, wg *sync.WaitGroup) {
	l.mu.Lock()
	l.ctx, l.wg = ctx, wg
	l.mu.Unlock()
}

// run starts the pinned pools and those with an adopted engine, then
// stops idle pools until ctx ends. ready is called once the pinned ones
// are ready. It runs under l.wg, so engines it starts join it in time.
func (l *loader) run(ready func()) {
	ctx := l.ctx
	defer func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
	}()
	var waits []chan struct{}
	l.mu.Lock()
	for _, m := range l.pools {
		if m.plan.Pinned || m.plan.adopt != nil {
			why := "pinned"
			if !m.plan.Pinned {
				why = "adopted"
			}
			l.startLocked(m, nil, why)
			if m.plan.Pinned {
				waits = append(waits, m.ready)
			}
		}
	}
	l.mu.Unlock()
	go func() {
		for _, c := range waits {
			select {
			case <-c:
			case <-ctx.Done():
				return
			}
		}
		ready()
	}()
	tick := time.NewTicker(l.tickEvery())
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			l.stopIdle()
		}
	}
}

// tickEvery checks idleness often enough to stop a pool within a tenth of
// its idle time (bounded to 20 ms .. 1 s).
func (l *loader) tickEvery() time.Duration {
	d := time.Second
	for _, m := range l.pools {
		d = min(d, m.plan.Idle/10)
	}
	return max(d, 20*time.Millisecond)
}

func (l *loader) stopIdle() {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	for _, m := range l.pools {
		if m.state == stateLoaded && !m.plan.Pinned && m.inFlight == 0 && now.Sub(m.lastUsed) >= m.plan.Idle {
			l.stopLocked(m, fmt.Sprintf("idle for %s", m.plan.Idle))
		}
	}
}

// find is the pool serving model: one that runs, else the first.
func (l *loader) find(model string) *managed {
	var first *managed
	for _, m := range l.pools {
		if m.plan.ModelName != model {
			continue
		}
		if m.state == stateLoaded || m.state == stateLoading {
			return m
		}
		if first == nil {
			first = m
		}
	}
	return first
}

// Wake implements router.Demand: a stopped pool is started, after the
// least recently used pools that must make room for it have stopped.
func (l *loader) Wake(model string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.find(model)
	switch {
	case m == nil || l.ctx == nil || l.closed || l.ctx.Err() != nil:
		return false
	case m.state == stateLoaded || m.state == stateLoading:
		return true
	}
	var after []chan struct{}
	if m.state == stateStop {
		after = append(after, m.done) // still stopping: start once it is gone
	}
	victims, ok := l.makeRoomLocked(m)
	if !ok {
		l.log.Warn("model does not fit its budget even with every unpinned pool stopped", "model", model, "need_mib", m.needMiB, "budget_mib", l.budget(m.gpu), "kind", kind(m.gpu))
		return false
	}
	for _, v := range victims {
		l.stopLocked(v, fmt.Sprintf("evicted (least recently used) for %s", m.plan.Name))
		after = append(after, v.done)
	}
	m.lastUsed = l.now()
	l.startLocked(m, after, "request")
	return true
}

// makeRoomLocked picks the pools to stop so m fits its budget: idle ones
// before busy ones, least recently used first, pinned never.
func (l *loader) makeRoomLocked(m *managed) ([]*managed, bool) {
	b := l.budget(m.gpu)
	if b == 0 {
		return nil, true
	}
	used := 0
	var cands []*managed
	for _, o := range l.pools {
		if o == m || o.gpu != m.gpu || (o.state != stateLoaded && o.state != stateLoading) {
			continue
		}
		used += o.needMiB
		if !o.plan.Pinned {
			cands = append(cands, o)
		}
	}
	sort.SliceStable(cands, func(a, c int) bool {
		if (cands[a].inFlight == 0) != (cands[c].inFlight == 0) {
			return cands[a].inFlight == 0
		}
		return cands[a].lastUsed.Before(cands[c].lastUsed)
	})
	var out []*managed
	for _, o := range cands {
		if used+m.needMiB <= b {
			break
		}
		out = append(out, o)
		used -= o.needMiB
	}
	return out, used+m.needMiB <= b
}

// startLocked runs the pool's engine once every channel in after is
// closed (the pools it replaces have stopped and freed their memory).
func (l *loader) startLocked(m *managed, after []chan struct{}, why string) {
	ctx, cancel := context.WithCancel(l.ctx)
	done, ready := make(chan struct{}), make(chan struct{})
	m.state, m.cancel, m.done, m.ready = stateLoading, cancel, done, ready
	m.setAction(l.now(), "starting ("+why+")")
	l.log.Info("starting pool", "pool", m.plan.Name, "model", m.plan.ModelName, "reason", why, "memory_mib", m.needMiB, "kind", kind(m.gpu))
	var once sync.Once
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer close(done)
		for _, c := range after {
			select {
			case <-c:
			case <-ctx.Done():
			}
		}
		if ctx.Err() == nil {
			l.h.runPool(ctx, m.plan, poolHooks{
				ready: func() {
					l.mu.Lock()
					if m.done == done && m.state == stateLoading {
						m.state = stateLoaded
						m.setAction(l.now(), "loaded")
					}
					l.mu.Unlock()
					once.Do(func() { close(ready) })
				},
				exited: func() {
					l.mu.Lock()
					if m.done == done && m.state == stateLoaded {
						m.state = stateLoading // restarting
					}
					l.mu.Unlock()
				},
			})
		}
		l.mu.Lock()
		if m.done == done {
			m.state = stateStopped
			m.setAction(l.now(), "stopped")
		}
		l.mu.Unlock()
		cancel()
	}()
}

// stopLocked drains the pool's instance (placement sends it nothing new;
// a request that arrives meanwhile waits and restarts the pool once it has
// stopped), lets the answers in flight finish (up to stopGrace), then
// stops the engine.
func (l *loader) stopLocked(m *managed, why string) {
	if m.cancel == nil || (m.state != stateLoaded && m.state != stateLoading) {
		return
	}
	l.log.Info("stopping pool", "pool", m.plan.Name, "model", m.plan.ModelName, "reason", why)
	m.state = stateStop
	m.setAction(l.now(), "stopping ("+why+")")
	cancel, id := m.cancel, instanceID(m.plan)
	if !l.h.reg.Drain(id) || l.inFlight == nil {
		cancel() // not announced yet: nothing to drain
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer cancel()
		// The router's view follows the registry within microseconds; the
		// pause covers a placement made just before it did.
		time.Sleep(drainSettle)
		deadline := time.Now().Add(stopGrace)
		for l.inFlight(id) > 0 && time.Now().Before(deadline) && l.ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}()
}

// drainSettle is how long a stop waits after draining before it trusts
// the router's in-flight count.
const drainSettle = 20 * time.Millisecond

func (m *managed) setAction(t time.Time, a string) { m.action, m.actionAt = a, t }

// Begin implements router.Demand.
func (l *loader) Begin(model string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m := l.find(model); m != nil {
		m.inFlight++
		m.lastUsed = l.now()
	}
}

// End implements router.Demand.
func (l *loader) End(model string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m := l.find(model); m != nil {
		m.inFlight = max(0, m.inFlight-1)
		m.lastUsed = l.now()
	}
}

// Models implements router.DemandReporter: every configured model.
func (l *loader) Models() []router.ModelState {
	best := map[string]string{}
	rank := map[string]int{stateStopped: 0, stateStop: 0, stateLoading: 1, stateLoaded: 2}
	l.mu.Lock()
	for _, m := range l.pools {
		st := m.state
		if st == stateStop {
			st = stateStopped
		}
		if cur, ok := best[m.plan.ModelName]; !ok || rank[st] > rank[cur] {
			best[m.plan.ModelName] = st
		}
	}
	l.mu.Unlock()
	out := make([]router.ModelState, 0, len(best))
	for model, st := range best {
		out = append(out, router.ModelState{Model: model, State: st})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Model < out[b].Model })
	return out
}

// Pools implements router.DemandReporter.
func (l *loader) Pools() []router.PoolState {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]router.PoolState, 0, len(l.pools))
	for _, m := range l.pools {
		ps := router.PoolState{Pool: m.plan.Name, Model: m.plan.ModelName, State: m.state, Max: 1, Leader: true,
			LastAction: m.action, MemoryMiB: m.needMiB, Pinned: m.plan.Pinned}
		if m.state == stateLoaded || m.state == stateLoading {
			ps.Desired = 1
		}
		if m.plan.Pinned {
			ps.Min = 1
		}
		if !m.actionAt.IsZero() {
			ps.LastAt = m.actionAt.UTC().Format(time.RFC3339)
		}
		out = append(out, ps)
	}
	return out
}
