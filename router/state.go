package router

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llorch/llorch/registry"
)

// localState tracks, per instance id, the router's in-flight requests,
// outlier detection (see outlier.go) and engine-reported busy periods. It
// implements LocalState.
type localState struct {
	od      outlierConfig
	now     func() time.Time
	onEject func(id string, d time.Duration)
	// onSkip is told when the max-ejection share kept an outlier in.
	onSkip func(id string)

	mu sync.RWMutex
	m  map[string]*instState
	// models counts each model's instances in the latest snapshot: the
	// base of the max-ejection share.
	models map[string]int
}

type instState struct {
	inFlight     atomic.Int64
	started      atomic.Int64 // requests ever started: engine reports are joined with those started since (engineload.go)
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 = never ejected
	busyUntil    atomic.Int64 // unix nanoseconds: the engine said 429/503 + Retry-After
	model        atomic.Pointer[string]

	mu          sync.Mutex
	consecutive int           // gateway failures in a row
	backoff     time.Duration // the next ejection's length
	probation   bool          // back from an ejection, not yet proven healthy
	returnedAt  time.Time     // when the last ejection ended (slow start)
	window      srWindow      // recent answers, for the success-rate rule
	// waiting holds the cancels of attempts that have not had their first
	// byte yet: when the instance leaves the registry (its node died, its
	// check went critical) they are cancelled and retried elsewhere rather
	// than left waiting for a first byte that will never come.
	waiting map[goneWatcher]struct{}
}

// goneWatcher is told when its instance left the registry.
type goneWatcher interface{ Abort(cause error) }

// cancelWatcher adapts a cancel func (continueOn's context) to goneWatcher.
type cancelWatcher func(error)

func (c *cancelWatcher) Abort(cause error) { (*c)(cause) }

// errInstanceGone cancels attempts to an instance that left the registry.
var errInstanceGone = errors.New("instance left the registry before answering")

// watchGone registers an attempt until its first byte: when the instance
// leaves the registry it is aborted. unwatchGone unregisters it (once the
// answer starts, and at the end; twice is harmless).
func (st *instState) watchGone(w goneWatcher) {
	st.mu.Lock()
	if st.waiting == nil {
		st.waiting = map[goneWatcher]struct{}{}
	}
	st.waiting[w] = struct{}{}
	st.mu.Unlock()
}

func (st *instState) unwatchGone(w goneWatcher) {
	st.mu.Lock()
	delete(st.waiting, w)
	st.mu.Unlock()
}

// acquire counts a request in flight; release ends it.
func (st *instState) acquire() {
	st.started.Add(1)
	st.inFlight.Add(1)
}

func (st *instState) release() { st.inFlight.Add(-1) }

// slotHold is one attempt's count in flight on an instance. An attempt
// releases it when the engine's answer ends, which can be before the
// attempt does (the client's final flush), or at the latest on return;
// release is idempotent so both can call it.
type slotHold struct{ st *instState }

func (st *instState) hold() slotHold {
	st.acquire()
	return slotHold{st}
}

func (h *slotHold) release() {
	if h.st != nil {
		h.st.release()
		h.st = nil
	}
}

func newLocalState(od outlierConfig, onEject func(string, time.Duration)) *localState {
	od = od.withDefaults()
	return &localState{od: od, now: time.Now, onEject: onEject, m: map[string]*instState{}, models: map[string]int{}}
}

func (s *localState) get(id string) *instState {
	s.mu.RLock()
	st := s.m[id]
	s.mu.RUnlock()
	if st != nil {
		return st
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st = s.m[id]; st == nil {
		st = &instState{backoff: s.od.base}
		s.m[id] = st
	}
	return st
}

func (s *localState) lookup(id string) *instState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.m[id]
}

// InFlight implements LocalState.
func (s *localState) InFlight(id string) int {
	if st := s.lookup(id); st != nil {
		return int(st.inFlight.Load())
	}
	return 0
}

// Started is how many requests the router ever started on id.
func (s *localState) Started(id string) int64 {
	s.mu.RLock()
	st := s.m[id]
	s.mu.RUnlock()
	if st == nil {
		return 0
	}
	return st.started.Load()
}

// EjectedFor implements LocalState.
func (s *localState) EjectedFor(id string) time.Duration {
	st := s.lookup(id)
	if st == nil {
		return 0
	}
	return s.left(st.ejectedUntil.Load())
}

// BusyFor is how much longer the engine asked not to be sent requests
// (its 429, or 503 with Retry-After); 0 if it did not.
func (s *localState) BusyFor(id string) time.Duration {
	st := s.lookup(id)
	if st == nil {
		return 0
	}
	return s.left(st.busyUntil.Load())
}

func (s *localState) left(untilNanos int64) time.Duration {
	if untilNanos == 0 {
		return 0
	}
	if d := time.Duration(untilNanos - s.now().UnixNano()); d > 0 {
		return d
	}
	return 0
}

// busy records an engine's "not now" for d: the placer sees the instance
// as full until then, so a request goes elsewhere or waits in the queue.
// It is not a fault.
func (s *localState) busy(id string, d time.Duration) {
	st := s.get(id)
	until := s.now().Add(d).UnixNano()
	for {
		old := st.busyUntil.Load()
		if old >= until || st.busyUntil.CompareAndSwap(old, until) {
			return
		}
	}
}

// acquire counts a request in flight on id; call the returned func once.
func (s *localState) acquire(id string) func() {
	st := s.get(id)
	st.acquire()
	return st.release
}

// sync takes a new snapshot: it learns each instance's model (for the
// max-ejection share), forgets instances that left and have nothing in
// flight, and cancels attempts still waiting on those that left.
func (s *localState) sync(snap *registry.Snapshot) {
	live := make(map[string]string, len(snap.Instances))
	models := map[string]int{}
	for _, in := range snap.Instances {
		live[in.ID] = in.Model
		models[in.Model]++
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.models = models
	for id, st := range s.m {
		if m, ok := live[id]; ok {
			if p := st.model.Load(); p == nil || *p != m {
				st.model.Store(&m)
			}
			continue
		}
		st.mu.Lock()
		for w := range st.waiting {
			w.Abort(errInstanceGone)
		}
		st.waiting = nil
		st.mu.Unlock()
		if st.inFlight.Load() == 0 {
			delete(s.m, id)
		}
	}
	for _, in := range snap.Instances {
		if _, ok := s.m[in.ID]; !ok {
			st := &instState{backoff: s.od.base}
			m := in.Model
			st.model.Store(&m)
			s.m[in.ID] = st
		}
	}
}
