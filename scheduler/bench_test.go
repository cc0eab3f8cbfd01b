package scheduler

import (
	"fmt"
	"testing"
	"time"
)

func TestBenchDecideRuns(t *testing.T) {
	for _, n := range []int{10, 1000} {
		r := BenchDecide(n, 50*time.Millisecond)
		if r.PerSec <= 0 || r.P99 < r.P50 {
			t.Fatalf("%+v", r)
		}
		t.Logf("%d candidates: %.0f decisions/s p50 %v p99 %v", n, r.PerSec, r.P50, r.P99)
	}
}

func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{10, 100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			s, ix, load, req := benchFleet(n)
			b.ReportAllocs()
			b.ResetTimer()
			for k := 0; k < b.N; k++ {
				req.SessionKey = benchSessions[k%len(benchSessions)]
				s.Decide(req, ix, load)
			}
		})
	}
}
