package scheduler

import (
	"container/list"
	"hash/fnv"
	"sync"

	"github.com/llorch/llorch/registry"
)

// Scorer names, as profiles list them.
const (
	ScorerLeastLoaded = "least-loaded"
	ScorerKVHeadroom  = "kv-headroom"
	ScorerPrefix      = "prefix-affinity"
	ScorerSession     = "session-affinity"
	ScorerCache       = "cache-affinity"
)

// Scorer rates every candidate from 0 to 1 into out (len(cands), zeroed);
// the profile weighs and sums.
type Scorer interface {
	Name() string
	Score(req *Request, cands []Candidate, out []float64)
}

// leastLoaded prefers the candidate with the least work: router in-flight
// requests, engine-busy slots and engine queue.
type leastLoaded struct{}

func (leastLoaded) Name() string { return ScorerLeastLoaded }
func (leastLoaded) Score(_ *Request, cands []Candidate, out []float64) {
	for i := range cands {
		if cands[i].Load.Stale {
			continue // unknown load scores below any known one, never as idle
		}
		out[i] = 1 / float64(1+cands[i].busy())
	}
}

// kvHeadroom prefers free KV cache (free VRAM for the sequences); an engine
// that reports none scores in the middle rather than being punished.
type kvHeadroom struct{}

func (kvHeadroom) Name() string { return ScorerKVHeadroom }
func (kvHeadroom) Score(_ *Request, cands []Candidate, out []float64) {
	for i := range cands {
		out[i] = 0.5
		if l := &cands[i].Load; l.Stale {
			out[i] = 0
		} else if l.KVKnown {
			out[i] = 1 - min(max(l.KVUsage, 0), 1)
		}
	}
}

// sessionAffinity keeps a session on one instance by consistent hashing:
// the session's home is its first successor on the model's ring (Index)
// that is still a candidate, so it stays put while its instance can take
// it, and only the sessions of an instance that goes move. Rendezvous
// hashing would give the same stability but costs a hash per candidate;
// the ring is searched once per decision.
type sessionAffinity struct{}

func (sessionAffinity) Name() string { return ScorerSession }
func (sessionAffinity) Score(_ *Request, cands []Candidate, out []float64) {
	best := -1
	for i := range cands {
		if r := cands[i].sessionRank; r > 0 && (best < 0 || r < cands[best].sessionRank) {
			best = i
		}
	}
	if best >= 0 {
		out[best] = 1
	}
}

// hrw is FNV-1a over key, a separator and id (inlined: fnv.New64a would
// allocate per candidate), finished with a 64-bit mixer because FNV's bits
// mix poorly for short inputs.
func hrw(key, id string) uint64 {
	x := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		x = (x ^ uint64(key[i])) * 1099511628211
	}
	x = (x ^ 0) * 1099511628211
	for i := 0; i < len(id); i++ {
		x = (x ^ uint64(id[i])) * 1099511628211
	}
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// prefixAffinity sends a request where its prompt's leading blocks were
// sent recently, where the engine's prefix cache likely still holds them.
// When load is imbalanced it stands aside (scores 0) so least-loaded
// decides, as the SGLang router's cache-aware policy and AIBrix's
// prefix-cache router do (AIBrix: a running-request spread above 8; the
// vLLM router: above an absolute and a 1.5× relative threshold).
type prefixAffinity struct {
	table  *PrefixTable
	absGap int
	relGap float64
}

func (prefixAffinity) Name() string { return ScorerPrefix }
func (p prefixAffinity) Score(req *Request, cands []Candidate, out []float64) {
	if p.table == nil || len(req.PrefixHashes) == 0 {
		return
	}
	lo, hi := cands[0].busy(), cands[0].busy()
	for i := range cands[1:] {
		b := cands[i+1].busy()
		lo, hi = min(lo, b), max(hi, b)
	}
	if hi-lo > p.absGap && float64(hi) > p.relGap*float64(lo) {
		return
	}
	// Decide filled prefixBlocks from this table while gathering.
	for i := range cands {
		if b := cands[i].prefixBlocks; b > 0 {
			out[i] = float64(b) / float64(len(req.PrefixHashes))
		}
	}
}

// PrefixTable remembers which instance each prompt-prefix block was last
// sent to, bounded by an LRU. The router owns it and records each decision
// with Observe; Decide only reads it.
type PrefixTable struct {
	mu    sync.Mutex
	cap   int
	m     map[uint64]*list.Element
	order *list.List // front = most recent
}

type prefixEntry struct {
	hash uint64
	id   string
}

// NewPrefixTable keeps at most capacity blocks.
func NewPrefixTable(capacity int) *PrefixTable {
	return &PrefixTable{cap: max(capacity, 1), m: map[uint64]*list.Element{}, order: list.New()}
}

// ownersInto appends, per hash, the instance id the block last went to
// ("" for none).
func (t *PrefixTable) ownersInto(dst []string, hashes []uint64) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, h := range hashes {
		id := ""
		if e, ok := t.m[h]; ok {
			id = e.Value.(prefixEntry).id
		}
		dst = append(dst, id)
	}
	return dst
}

// Observe records that the request's blocks went to inst.
func (t *PrefixTable) Observe(req Request, inst registry.Instance) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, h := range req.PrefixHashes {
		if e, ok := t.m[h]; ok {
			e.Value = prefixEntry{h, inst.ID}
			t.order.MoveToFront(e)
			continue
		}
		t.m[h] = t.order.PushFront(prefixEntry{h, inst.ID})
		if t.order.Len() > t.cap {
			old := t.order.Back()
			t.order.Remove(old)
			delete(t.m, old.Value.(prefixEntry).hash)
		}
	}
}

// Len is the number of blocks remembered.
func (t *PrefixTable) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.order.Len()
}

// PrefixBlockChars is the size of a prompt block: about 16 tokens of
// English text, the block size AIBrix and vLLM's prefix caching use.
const PrefixBlockChars = 64

// MaxPrefixBlocks bounds the work per request.
const MaxPrefixBlocks = 32

// PrefixHashes hashes the prompt's leading full blocks, each hash chained
// to the one before, so equal hashes mean equal prefixes up to that block.
func PrefixHashes(prompt string) []uint64 {
	n := min(len(prompt)/PrefixBlockChars, MaxPrefixBlocks)
	if n == 0 {
		return nil
	}
	out := make([]uint64, n)
	h := fnv.New64a()
	for i := 0; i < n; i++ {
		h.Write([]byte(prompt[i*PrefixBlockChars : (i+1)*PrefixBlockChars]))
		out[i] = h.Sum64()
	}
	return out
}
