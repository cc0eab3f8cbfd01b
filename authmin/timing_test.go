package authmin

import (
	"fmt"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// timingSpread measures cmp(secret, candidate) for each candidate in many
// interleaved rounds and returns each candidate's median ns/op and the
// spread (max-min)/min of those medians.
//
// Why this statistic holds on a noisy 2-core machine: each round times a
// batch of every candidate back to back, in an order that rotates, so CPU
// frequency changes and neighbours' load hit all candidates alike; medians
// over rounds discard the rounds a scheduler hiccup spoiled.
func timingSpread(cmp func(a, b string) bool, secret string, candidates []string, rounds, batch int) (medians []float64, spread float64) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	n := len(candidates)
	samples := make([][]float64, n)
	sink := false
	for i := 0; i < batch*10; i++ { // warm-up: caches, branch predictors, CPU clock
		sink = sink != cmp(secret, candidates[i%n])
	}
	for r := 0; r < rounds; r++ {
		for k := 0; k < n; k++ {
			c := (r + k) % n
			cand := candidates[c]
			t0 := time.Now()
			for i := 0; i < batch; i++ {
				sink = sink != cmp(secret, cand)
			}
			samples[c] = append(samples[c], float64(time.Since(t0).Nanoseconds())/float64(batch))
		}
	}
	_ = sink
	lo, hi := 0.0, 0.0
	for c := range samples {
		sort.Float64s(samples[c])
		m := samples[c][len(samples[c])/2]
		medians = append(medians, m)
		if c == 0 || m < lo {
			lo = m
		}
		if m > hi {
			hi = m
		}
	}
	return medians, (hi - lo) / lo
}

func flip(s string, i int) string {
	b := []byte(s)
	b[i] ^= 0x01
	return string(b)
}

// The predecessor's bar: a 64-byte token compared with candidates that
// differ at byte 0, at byte 63, and in length must not differ in time by
// more than 10% (our goal is under 3%). The figure is printed so CI's log
// carries it.
func TestTimingSafeEqualIsConstantTime(t *testing.T) {
	secret := strings.Repeat("k", 64)
	candidates := []string{flip(secret, 0), flip(secret, 63), secret + strings.Repeat("k", 32)}
	var spread float64
	var med []float64
	for attempt := 1; attempt <= 3; attempt++ {
		med, spread = timingSpread(TimingSafeEqual, secret, candidates, 61, 400)
		fmt.Printf("authmin timing: byte0=%.0fns byte63=%.0fns len=%.0fns maxdiff=%.2f%% (attempt %d)\n", med[0], med[1], med[2], spread*100, attempt)
		if spread <= 0.10 {
			return
		}
	}
	t.Fatalf("TimingSafeEqual timing depends on the input: spread %.2f%% > 10%%", spread*100)
}

// The statistic must be able to fail: run it on a comparison that exits at
// the first differing byte, on inputs long enough for the exit to show.
func TestTimingDetectorCatchesEarlyExit(t *testing.T) {
	earlyExit := func(a, b string) bool {
		if len(a) != len(b) {
			return false
		}
		for i := 0; i < len(a); i++ {
			if a[i] != b[i] {
				return false
			}
		}
		return true
	}
	secret := strings.Repeat("k", 64<<10)
	candidates := []string{flip(secret, 0), flip(secret, len(secret)-1)}
	_, spread := timingSpread(earlyExit, secret, candidates, 21, 20)
	fmt.Printf("authmin timing detector: early-exit compare spread=%.0f%%\n", spread*100)
	if spread <= 0.10 {
		t.Fatalf("detector missed an early-exit comparison (spread %.2f%%)", spread*100)
	}
}
