package keys

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// Limits enforces every key's limits on this router. With n live routers
// each enforces 1/n of a key's rpm and tpm (and of its concurrency, at
// least one); the share follows n as routers come and go. Counters live by
// key name, so a reload that keeps a key keeps what it has used.
type Limits struct {
	mu      sync.Mutex
	span    time.Duration
	routers int
	now     func() time.Time
	state   map[string]*keyState
}

type keyState struct {
	reqs, toks *window
	inFlight   int
}

// NewLimits makes the limiter; span is the limits' window (a minute; tests
// shorten it, and rpm/tpm then count per span).
func NewLimits(span time.Duration) *Limits {
	if span <= 0 {
		span = time.Minute
	}
	return &Limits{span: span, routers: 1, now: time.Now, state: map[string]*keyState{}}
}

// SetRouters sets the number of live routers sharing each limit.
func (l *Limits) SetRouters(n int) {
	l.mu.Lock()
	l.routers = max(1, n)
	l.mu.Unlock()
}

// Routers is the number of routers the limits are shared among.
func (l *Limits) Routers() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.routers
}

// Refusal is a request over one of its key's limits.
type Refusal struct {
	Limit      string // "rpm", "tpm" or "concurrent"
	Max        int    // the key's configured limit
	Share      float64
	RetryAfter time.Duration
	Key        string
}

func (r *Refusal) Error() string {
	per := ""
	if r.Limit != "concurrent" {
		per = " per minute"
	}
	return fmt.Sprintf("API key %q is over its %s limit (%d%s across all routers; this router's share is %.4g); retry after %s",
		r.Key, r.Limit, r.Max, per, r.Share, r.RetryAfter.Round(time.Millisecond))
}

// Admission is an admitted request's hold on its key's counters.
type Admission struct {
	l      *Limits
	key    string
	epoch  int64
	held   bool
	counts bool
}

func (l *Limits) st(name string) *keyState {
	s := l.state[name]
	if s == nil {
		s = &keyState{reqs: newWindow(l.span), toks: newWindow(l.span)}
		l.state[name] = s
	}
	return s
}

// Admit checks k's limits for one more request and, when it fits, counts
// it (one request, one in flight). Tokens are charged afterwards (Charge):
// a request is admitted while the key's tokens in the window are under its
// share, so the last one admitted can overshoot by its own size.
func (l *Limits) Admit(k *Key) (*Admission, *Refusal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	s := l.st(k.Name)
	n := float64(l.routers)
	if k.Concurrent > 0 {
		share := max(1, int(math.Floor(float64(k.Concurrent)/n)))
		if s.inFlight >= share {
			// A slot frees when a request ends; nothing predicts when.
			return nil, &Refusal{Limit: "concurrent", Max: k.Concurrent, Share: float64(share), RetryAfter: time.Second, Key: k.Name}
		}
	}
	if k.RPM > 0 {
		share := float64(k.RPM) / n
		if float64(s.reqs.sum(now)+1) > share {
			return nil, &Refusal{Limit: "rpm", Max: k.RPM, Share: share, RetryAfter: s.reqs.until(now, share-1), Key: k.Name}
		}
	}
	if k.TPM > 0 {
		share := float64(k.TPM) / n
		if float64(s.toks.sum(now)) >= share {
			return nil, &Refusal{Limit: "tpm", Max: k.TPM, Share: share, RetryAfter: s.toks.until(now, math.Nextafter(share, 0)), Key: k.Name}
		}
	}
	a := &Admission{l: l, key: k.Name, held: true, counts: true}
	a.epoch = s.reqs.add(now, 1)
	s.inFlight++
	return a, nil
}

// Refund takes the request back: it was refused after admission (no
// instance, bad placement) and costs nothing. It also ends it.
func (a *Admission) Refund() {
	if a == nil {
		return
	}
	a.l.mu.Lock()
	defer a.l.mu.Unlock()
	s := a.l.st(a.key)
	if a.counts {
		s.reqs.undo(a.epoch, 1)
		a.counts = false
	}
	a.release(s)
}

// Charge counts tokens the request used and ends it.
func (a *Admission) Charge(tokens int64) {
	if a == nil {
		return
	}
	a.l.mu.Lock()
	defer a.l.mu.Unlock()
	s := a.l.st(a.key)
	if tokens > 0 {
		s.toks.add(a.l.now(), tokens)
	}
	a.release(s)
}

func (a *Admission) release(s *keyState) {
	if a.held {
		s.inFlight--
		a.held = false
	}
}
