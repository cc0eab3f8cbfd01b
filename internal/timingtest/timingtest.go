// Package timingtest is the statistic llorch's constant-time tests use:
// interleaved batches, per-round minima, medians across rounds (see
// Spread). authmin's test introduced it; router/keys uses it over a key set.
package timingtest

import (
	"runtime"
	"sort"
	"time"
)

// Spread times op(candidate) for each candidate and returns each one's
// typical ns/op and the spread (max-min)/min of those figures.
//
// Why it holds on a loaded 2-core machine: every round times reps batches
// of every candidate, interleaved in an order that rotates from round to
// round, so CPU clock changes and neighbours' load hit all candidates
// alike. Within a round a candidate's figure is the minimum of its batches
// (interference only ever adds time); across rounds the median discards
// the rounds a scheduler hiccup spoiled for one candidate.
func Spread(op func(candidate string) bool, candidates []string, rounds, reps, batch int) (typical []float64, spread float64) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	n := len(candidates)
	perRound := make([][]float64, n)
	sink := false
	for i := 0; i < batch*n*10; i++ { // warm-up: caches, branch predictors, CPU clock
		sink = sink != op(candidates[i%n])
	}
	best := make([]float64, n)
	for r := 0; r < rounds; r++ {
		clear(best)
		for rep := 0; rep < reps; rep++ {
			for k := 0; k < n; k++ {
				c := (r + rep + k) % n
				cand := candidates[c]
				t0 := time.Now()
				for i := 0; i < batch; i++ {
					sink = sink != op(cand)
				}
				ns := float64(time.Since(t0).Nanoseconds()) / float64(batch)
				if best[c] == 0 || ns < best[c] {
					best[c] = ns
				}
			}
		}
		for c := range best {
			perRound[c] = append(perRound[c], best[c])
		}
	}
	if sink && n < 0 { // keeps the calls from being optimised away
		panic("unreachable")
	}
	lo, hi := 0.0, 0.0
	for c := range perRound {
		sort.Float64s(perRound[c])
		m := perRound[c][len(perRound[c])/2]
		typical = append(typical, m)
		if c == 0 || m < lo {
			lo = m
		}
		if m > hi {
			hi = m
		}
	}
	return typical, (hi - lo) / lo
}
