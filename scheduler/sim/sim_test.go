package sim

import (
	"testing"
)

// On the same workload, routing by prompt prefix finds more of each prompt
// already cached than least-loaded or round-robin, and the simulation is
// deterministic for a seed.
func TestPrefixAffinityRaisesHitRate(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Requests = 4000
	res, err := Compare(cfg)
	if err != nil {
		t.Fatal(err)
	}
	by := map[Policy]Result{}
	for _, r := range res {
		by[r.Policy] = r
		t.Log(r)
	}
	if by[PrefixAffinity].HitRate <= by[RoundRobin].HitRate || by[PrefixAffinity].HitRate <= by[LeastLoaded].HitRate {
		t.Errorf("prefix affinity hit %.3f, least-loaded %.3f, round-robin %.3f", by[PrefixAffinity].HitRate, by[LeastLoaded].HitRate, by[RoundRobin].HitRate)
	}
	// The router's default profile (sticky sessions on a consistent-hash
	// ring, prefix affinity, load) keeps the hit rate without hot-spotting:
	// with too few ring points per instance it sent 26% of requests to one
	// of 8 instances and queued for seconds.
	if d := by[DefaultProfile]; d.HitRate <= by[RoundRobin].HitRate || d.MaxShare > 0.2 {
		t.Errorf("default profile: hit %.3f, busiest instance %.1f%% of requests", d.HitRate, 100*d.MaxShare)
	}
	again, _ := Run(func() Config { c := cfg; c.Policy = PrefixAffinity; return c }())
	if again != by[PrefixAffinity] {
		t.Errorf("not deterministic: %+v vs %+v", again, by[PrefixAffinity])
	}
	if _, err := Run(Config{Policy: "nope"}); err == nil {
		t.Error("unknown policy accepted")
	}
}
