package scheduler

import (
	"fmt"
	"os"
	"testing"
	"time"
)

// TestBenchDecide runs the bench program's measurement briefly so it cannot
// rot; LLORCH_SCHED_BENCH=1s (any duration) measures for real and logs the
// table (go test -run BenchDecide -v ./scheduler/).
func TestBenchDecide(t *testing.T) {
	d := 50 * time.Millisecond
	if v := os.Getenv("LLORCH_SCHED_BENCH"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("LLORCH_SCHED_BENCH: %v", err)
		}
	}
	for _, n := range []int{10, 100, 1000, 10000} {
		r := BenchDecide(n, d)
		if r.PerSec <= 0 || r.P99 < r.P50 || r.Candidates != n {
			t.Fatalf("%+v", r)
		}
		t.Logf("%5d candidates: %8.0f decisions/s  p50 %v  p99 %v", n, r.PerSec, r.P50, r.P99)
	}
}

// BenchmarkDecide: go test -run X -bench Decide ./scheduler/ (mean time and
// allocations per decision; BenchDecide gives the percentiles).
func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{10, 100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			s, ix, load, req := benchFleet(n)
			b.ReportAllocs()
			b.ResetTimer()
			for k := 0; k < b.N; k++ {
				req.SessionKey = benchSessions[k%len(benchSessions)]
				req.SampleSeed = uint64(k)
				s.Decide(req, ix, load)
			}
		})
	}
}
