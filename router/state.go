package router

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llorch/llorch/registry"
)

// localState tracks, per instance id, the router's in-flight requests and
// passive ejection (outlier detection). It implements LocalState.
type localState struct {
	ejectAfter int
	base, cap  time.Duration
	now        func() time.Time
	onEject    func(id string, d time.Duration)

	mu sync.RWMutex
	m  map[string]*instState
}

type instState struct {
	inFlight     atomic.Int64
	started      atomic.Int64 // requests ever started: engine reports are joined with those started since (engineload.go)
	ejectedUntil atomic.Int64 // unix nanoseconds; 0 = never ejected

	mu          sync.Mutex
	consecutive int
	backoff     time.Duration // the next ejection's length
	probation   bool          // back from an ejection, not yet proven healthy
	// waiting holds the cancels of attempts that have not had their first
	// byte yet: when the instance leaves the registry (its node died, its
	// check went critical) they are cancelled and retried elsewhere rather
	// than left waiting for a first byte that will never come.
	waiting map[*int]func(error)
}

// errInstanceGone cancels attempts to an instance that left the registry.
var errInstanceGone = errors.New("instance left the registry before answering")

// watchGone registers an attempt's cancel until its first byte; the
// returned func unregisters it (call it once the answer starts, and at the
// end).
func (s *localState) watchGone(id string, cancel func(error)) func() {
	st := s.get(id)
	key := new(int)
	st.mu.Lock()
	if st.waiting == nil {
		st.waiting = map[*int]func(error){}
	}
	st.waiting[key] = cancel
	st.mu.Unlock()
	return func() {
		st.mu.Lock()
		delete(st.waiting, key)
		st.mu.Unlock()
	}
}

func newLocalState(ejectAfter int, base, cap time.Duration, onEject func(string, time.Duration)) *localState {
	return &localState{ejectAfter: ejectAfter, base: base, cap: cap, now: time.Now, onEject: onEject, m: map[string]*instState{}}
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
		st = &instState{backoff: s.base}
		s.m[id] = st
	}
	return st
}

// InFlight implements LocalState.
func (s *localState) InFlight(id string) int {
	s.mu.RLock()
	st := s.m[id]
	s.mu.RUnlock()
	if st == nil {
		return 0
	}
	return int(st.inFlight.Load())
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
	s.mu.RLock()
	st := s.m[id]
	s.mu.RUnlock()
	if st == nil {
		return 0
	}
	until := st.ejectedUntil.Load()
	if until == 0 {
		return 0
	}
	if d := time.Duration(until - s.now().UnixNano()); d > 0 {
		return d
	}
	return 0
}

// acquire counts a request in flight on id; call the returned func once.
func (s *localState) acquire(id string) func() {
	st := s.get(id)
	st.started.Add(1)
	st.inFlight.Add(1)
	return func() { st.inFlight.Add(-1) }
}

// fault records a real failure (connect error, reset, 5xx, timeout). The
// ejectAfter-th in a row ejects the instance; one fault right after an
// ejection ends ejects it again for twice as long.
func (s *localState) fault(id string) {
	st := s.get(id)
	st.mu.Lock()
	now := s.now()
	if until := st.ejectedUntil.Load(); until != 0 && now.UnixNano() >= until {
		// The previous ejection ran out: this instance is on probation.
		st.probation = true
	}
	if until := st.ejectedUntil.Load(); until > now.UnixNano() {
		// Requests that started before the ejection still report; they
		// neither extend nor stack it.
		st.mu.Unlock()
		return
	}
	st.consecutive++
	var ejectFor time.Duration
	if st.consecutive >= s.ejectAfter || st.probation {
		ejectFor = st.backoff
		st.ejectedUntil.Store(now.Add(ejectFor).UnixNano())
		st.backoff = min(st.backoff*2, s.cap)
		st.consecutive, st.probation = 0, false
	}
	st.mu.Unlock()
	if ejectFor > 0 && s.onEject != nil {
		s.onEject(id, ejectFor)
	}
}

// success records an answer that shows the instance works (2xx, and 4xx:
// a client error says nothing bad about the engine).
func (s *localState) success(id string) {
	st := s.get(id)
	st.mu.Lock()
	st.consecutive = 0
	if until := st.ejectedUntil.Load(); until == 0 || s.now().UnixNano() >= until {
		// Not ejected (any more): the instance has proven itself.
		st.ejectedUntil.Store(0)
		st.probation = false
		st.backoff = s.base
	}
	st.mu.Unlock()
}

// prune forgets instances that left the registry and have nothing in
// flight, so the map does not grow with every instance ever seen.
func (s *localState) prune(snap *registry.Snapshot) {
	live := make(map[string]bool, len(snap.Instances))
	for _, in := range snap.Instances {
		live[in.ID] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, st := range s.m {
		if live[id] {
			continue
		}
		st.mu.Lock()
		for _, cancel := range st.waiting {
			cancel(errInstanceGone)
		}
		st.waiting = nil
		st.mu.Unlock()
		if st.inFlight.Load() == 0 {
			delete(s.m, id)
		}
	}
}
