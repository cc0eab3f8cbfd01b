package router

import (
	"sync"
	"time"
)

// reservations close the gap between placing a request and counting it in
// flight: the proxy counts an attempt when it starts it, after admission
// and request set-up, and until then a concurrent placement would see the
// slot still free and take it too. Each placement reserves its instance;
// the reservation is consumed when the router starts a request there (its
// started count moves), or dropped after reserveTTL (the request was
// cancelled or went to a later candidate).
type reservations struct {
	mu sync.Mutex
	m  map[string]*resv
}

type resv struct {
	buf     []time.Time // at's backing array, reused
	at      []time.Time // oldest first
	seen    int64       // the instance's started count already matched
	lastAdd time.Time
}

// resvKeep is how long an instance's emptied entry is kept for its next
// placement (a busy instance is placed on again at once; re-making its
// entry and slice each time cost two allocations per request).
const resvKeep = 10 * time.Second

const reserveTTL = time.Second

// add reserves id; started is the router's started count for id now.
func (r *reservations) add(id string, started int64, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]*resv{}
	}
	e := r.m[id]
	if e == nil {
		e = &resv{seen: started}
		r.m[id] = e
	}
	e.consume(started, now)
	if len(e.at) == cap(e.at) {
		// consume cuts from the front: slide the live ones back to the
		// start of buf, growing it only when it is full.
		if len(e.at) >= cap(e.buf) {
			e.buf = make([]time.Time, 0, max(4, 2*len(e.at)))
		}
		e.at = append(e.buf[:0], e.at...)
	}
	e.at = append(e.at, now)
	e.lastAdd = now
}

// pending is how many placements on id have not started yet.
func (r *reservations) pending(id string, started int64, now time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.m[id]
	if e == nil {
		return 0
	}
	e.consume(started, now)
	if len(e.at) == 0 && now.Sub(e.lastAdd) > resvKeep {
		delete(r.m, id)
	}
	return len(e.at)
}

func (e *resv) consume(started int64, now time.Time) {
	if n := started - e.seen; n > 0 {
		e.at = e.at[min(int(n), len(e.at)):]
		e.seen = started
	}
	k := 0
	for k < len(e.at) && now.Sub(e.at[k]) > reserveTTL {
		k++
	}
	e.at = e.at[k:]
}
