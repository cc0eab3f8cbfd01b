package scheduler

import "math"

// DefaultBoundedLoad is cache-affinity's default ε.
const DefaultBoundedLoad = 0.25

// cacheAffinity places a conversation by consistent hashing with bounded
// load (Mirrokni, Thorup and Zadimoghaddam; the scheme KubeAI's
// prefix-hash balancer and Vimeo's HAProxy use): the request's affinity key
// (PromptKey: the conversation's opening, the same for every turn) finds a
// home on the model's ring; a home carrying more than ⌈(1+ε)·(L+1)/n⌉
// requests, L the candidates' total load, passes the request to the next
// successor on the ring. Routers share no state, yet with the same
// engine-reported load they make the same choice, so a conversation's
// turns find the engine that holds its prompt cache, while no instance
// carries much more than its share.
//
// An instance whose load is unknown (stale reports) is passed over: its
// bound cannot be checked.
type cacheAffinity struct{ eps float64 }

func (cacheAffinity) Name() string { return ScorerCache }
func (a cacheAffinity) Score(req *Request, cands []Candidate, out []float64) {
	if req.AffinityKey == "" {
		return
	}
	total := 0
	for i := range cands {
		total += cands[i].busy()
	}
	bound := int(math.Ceil((1 + a.eps) * float64(total+1) / float64(len(cands))))
	best := -1
	for i := range cands {
		c := &cands[i]
		if c.affinityRank == 0 || c.Load.Stale || c.busy() >= bound {
			continue
		}
		if best < 0 || c.affinityRank < cands[best].affinityRank {
			best = i
		}
	}
	if best >= 0 {
		out[best] = 1
	}
}
