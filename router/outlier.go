package router

import (
	"time"
)

// Outlier detection after Envoy's: an instance is ejected (taken out of
// placement for a back-off that doubles while it keeps failing) when
//   - it fails at the gateway level N times in a row: connect errors,
//     resets, timeouts before the first byte or between events, 502, 504,
//     and 503 without Retry-After (consecutive gateway failures); or
//   - its success rate over its recent answers falls below a threshold
//     (500s and other 5xx count only here: one prompt that makes an engine
//     answer 500 says little about the engine, many do);
//
// but never when that would take more than the max-ejection share of the
// model's instances out (the router must not empty a pool by itself). An
// instance back from an ejection is on probation (one gateway failure
// re-ejects it) and in slow start: the placer sees it as busier than it
// is, the extra falling to nothing over slow-start.

// outlierConfig holds the detection's settings (from Config).
type outlierConfig struct {
	consecutive   int           // gateway failures in a row that eject
	base, cap     time.Duration // first ejection; the longest
	maxShare      float64       // of a model's instances, 0..1
	srMinRequests int           // answers in the window before the success-rate rule applies
	srThreshold   float64       // success rate under which an instance is ejected, 0..1
	slowStart     time.Duration
}

// slowStartLoad is how many requests busier an instance just back from an
// ejection looks to the placer at first.
const slowStartLoad = 4

// srWindowLen is how many recent answers the success-rate rule looks at.
const srWindowLen = 64

func (c outlierConfig) withDefaults() outlierConfig {
	if c.consecutive <= 0 {
		c.consecutive = 3
	}
	if c.base <= 0 {
		c.base = 5 * time.Second
	}
	if c.cap < c.base {
		c.cap = c.base
	}
	if c.srMinRequests <= 0 || c.srMinRequests > srWindowLen {
		c.srMinRequests = min(20, srWindowLen)
	}
	return c
}

func outlierFromConfig(cfg Config) outlierConfig {
	return outlierConfig{consecutive: cfg.EjectAfter, base: cfg.EjectBackoff, cap: cfg.EjectBackoffMax,
		maxShare: float64(cfg.EjectMaxPercent) / 100, srMinRequests: cfg.EjectSuccessRateMinReqs,
		srThreshold: float64(cfg.EjectSuccessRatePercent) / 100, slowStart: cfg.SlowStart}
}

// srWindow is a ring of recent answers: true = success.
type srWindow struct {
	ok   [srWindowLen]bool
	n    int // filled entries
	next int
}

func (w *srWindow) add(ok bool) {
	w.ok[w.next] = ok
	w.next = (w.next + 1) % srWindowLen
	w.n = min(w.n+1, srWindowLen)
}

func (w *srWindow) rate() float64 {
	good := 0
	for i := 0; i < w.n; i++ {
		if w.ok[i] {
			good++
		}
	}
	return float64(good) / float64(w.n)
}

// onReturn notes that an ejection ran out: probation and slow start begin.
// Called with st.mu held.
func (s *localState) onReturn(st *instState, now time.Time) {
	if until := st.ejectedUntil.Load(); until != 0 && now.UnixNano() >= until && !st.probation && st.returnedAt.UnixNano() < until {
		st.probation = true
		st.returnedAt = time.Unix(0, until)
	}
}

// gatewayFailure records a connect error, reset, timeout, 502, 504 or 503
// without Retry-After. The consecutive-th in a row ejects the instance;
// one on probation re-ejects it for twice as long.
func (s *localState) gatewayFailure(id string) {
	st := s.get(id)
	st.mu.Lock()
	now := s.now()
	s.onReturn(st, now)
	if until := st.ejectedUntil.Load(); until > now.UnixNano() {
		// Requests that started before the ejection still report; they
		// neither extend nor stack it.
		st.mu.Unlock()
		return
	}
	st.consecutive++
	var ejectFor time.Duration
	if st.consecutive >= s.od.consecutive || st.probation {
		ejectFor = s.eject(id, st, now)
	}
	st.mu.Unlock()
	s.report(id, ejectFor)
}

// serverError records a 5xx answer the engine gave (500 and the like):
// it lowers the success rate; it does not count as a gateway failure.
func (s *localState) serverError(id string) {
	st := s.get(id)
	st.mu.Lock()
	now := s.now()
	s.onReturn(st, now)
	st.window.add(false)
	var ejectFor time.Duration
	if st.ejectedUntil.Load() <= now.UnixNano() && st.window.n >= s.od.srMinRequests && st.window.rate() < s.od.srThreshold {
		if ejectFor = s.eject(id, st, now); ejectFor > 0 {
			st.window = srWindow{} // a fresh look after the ejection
		}
	}
	st.mu.Unlock()
	s.report(id, ejectFor)
}

// success records an answer that shows the instance works (2xx, and 4xx:
// a client error says nothing bad about the engine).
func (s *localState) success(id string) {
	st := s.get(id)
	st.mu.Lock()
	now := s.now()
	s.onReturn(st, now)
	st.consecutive = 0
	st.window.add(true)
	if until := st.ejectedUntil.Load(); until == 0 || now.UnixNano() >= until {
		// Not ejected (any more): the instance has proven itself.
		st.probation = false
		st.backoff = s.od.base
	}
	st.mu.Unlock()
}

// eject takes st out for its back-off unless the model's max-ejection
// share is reached; it returns the period, 0 when kept in. Called with
// st.mu held.
func (s *localState) eject(id string, st *instState, now time.Time) time.Duration {
	if !s.mayEject(id, st) {
		return -1
	}
	d := st.backoff
	st.ejectedUntil.Store(now.Add(d).UnixNano())
	st.backoff = min(st.backoff*2, s.od.cap)
	st.consecutive, st.probation = 0, false
	return d
}

// mayEject: would ejecting id keep the model's ejected instances within
// the max share? floor(share × instances) may be out at once, so a model
// with one instance never loses it. Before the first snapshot names the
// model there is no base for a share, and the rule does not apply.
func (s *localState) mayEject(id string, st *instState) bool {
	mp := st.model.Load()
	if mp == nil {
		return true
	}
	nowNanos := s.now().UnixNano()
	s.mu.RLock()
	defer s.mu.RUnlock()
	total := s.models[*mp]
	if total == 0 {
		return true
	}
	out := 0
	for oid, o := range s.m {
		if oid == id {
			continue
		}
		if m := o.model.Load(); m != nil && *m == *mp && o.ejectedUntil.Load() > nowNanos {
			out++
		}
	}
	return float64(out+1) <= s.od.maxShare*float64(total)+1e-9
}

func (s *localState) report(id string, ejectFor time.Duration) {
	switch {
	case ejectFor > 0 && s.onEject != nil:
		s.onEject(id, ejectFor)
	case ejectFor < 0 && s.onSkip != nil:
		s.onSkip(id)
	}
}

// slowStartExtra is the load the placer adds to an instance back from an
// ejection: slowStartLoad at its return, falling linearly to 0 over
// slow-start.
func (s *localState) slowStartExtra(id string) int {
	st := s.lookup(id)
	if st == nil || s.od.slowStart <= 0 {
		return 0
	}
	st.mu.Lock()
	s.onReturn(st, s.now())
	back := st.returnedAt
	st.mu.Unlock()
	if back.IsZero() {
		return 0
	}
	since := s.now().Sub(back)
	if since < 0 || since >= s.od.slowStart {
		return 0
	}
	frac := 1 - float64(since)/float64(s.od.slowStart)
	return int(frac*slowStartLoad + 0.999)
}
