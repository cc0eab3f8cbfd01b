package keys

import "time"

// slots is how many buckets make a window's span: what is counted leaves
// the window in steps of span/slots.
const slots = 60

// ring is the buckets kept: the span's and the one partly older than it.
// A count leaves only once its whole bucket is older than the span, so it
// stays between span and span+slot, never less: in no span-long stretch
// does the window admit more than its limit (it may admit up to 1/slots
// less, as a count waits out the rest of its bucket).
const ring = slots + 1

// window counts over a sliding span in buckets of span/slots. It is not
// safe for concurrent use (Limits locks around it).
type window struct {
	span, slot time.Duration
	epoch      [ring]int64 // which slot-length interval each bucket holds
	count      [ring]int64
}

func newWindow(span time.Duration) *window {
	return &window{span: span, slot: max(span/slots, time.Millisecond)}
}

func (w *window) at(now time.Time) int64 { return now.UnixNano() / int64(w.slot) }

// sum is what was counted in the window ending now.
func (w *window) sum(now time.Time) int64 {
	e := w.at(now)
	var s int64
	for i := range ring {
		if w.epoch[i] > e-ring {
			s += w.count[i]
		}
	}
	return s
}

// add counts n now (negative n takes back a count made in the same
// interval as stamp; later it has already left or is in the window).
func (w *window) add(now time.Time, n int64) int64 {
	e := w.at(now)
	i := e % ring
	if w.epoch[i] != e {
		w.epoch[i], w.count[i] = e, 0
	}
	w.count[i] += n
	return e
}

// undo takes back n counted at epoch e, if its bucket still holds it.
func (w *window) undo(e, n int64) {
	i := e % ring
	if w.epoch[i] == e {
		w.count[i] -= n
	}
}

// until is how long until the window's sum, now s, drops to at most
// allowed: the time for the oldest buckets to leave it.
func (w *window) until(now time.Time, allowed float64) time.Duration {
	e := w.at(now)
	s := w.sum(now)
	for age := int64(ring - 1); age >= 0; age-- {
		be := e - age
		i := be % ring
		if w.epoch[i] != be {
			continue
		}
		s -= w.count[i]
		if float64(s) <= allowed {
			// Bucket be leaves the window when slot be+ring begins.
			leave := time.Unix(0, (be+ring)*int64(w.slot))
			return max(leave.Sub(now), time.Millisecond)
		}
	}
	return w.span
}
