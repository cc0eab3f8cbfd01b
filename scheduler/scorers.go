package scheduler

import (
	"container/list"
	"hash/fnv"
	"sync"

	"github.com/llorch/llorch/instance"
)

// Scorer names, as profiles list them.
const (
	ScorerLeastLoaded = "least-loaded"
	ScorerKVHeadroom  = "kv-headroom"
	ScorerPrefix      = "prefix-affinity"
	ScorerSession     = "session-affinity"
)

// Scorer rates every candidate from 0 to 1 into out (len(cands), zeroed);
// the profile weighs and sums.
type Scorer interface {
	Name() string
	Score(req Request, cands []Candidate, out []float64)
}

// leastLoaded prefers the candidate with the least work: router in-flight
// requests, engine-busy slots and engine queue.
type leastLoaded struct{}

func (leastLoaded) Name() string { return ScorerLeastLoaded }
func (leastLoaded) Score(_ Request, cands []Candidate, out []float64) {
	for i, c := range cands {
		out[i] = 1 / float64(1+c.busy())
	}
}

// kvHeadroom prefers free KV cache (free VRAM for the sequences); an engine
// that reports none scores in the middle rather than being punished.
type kvHeadroom struct{}

func (kvHeadroom) Name() string { return ScorerKVHeadroom }
func (kvHeadroom) Score(_ Request, cands []Candidate, out []float64) {
	for i, c := range cands {
		out[i] = 0.5
		if c.Load.KVKnown {
			out[i] = 1 - min(max(c.Load.KVUsage, 0), 1)
		}
	}
}

// sessionAffinity keeps a session on one instance by consistent hashing:
// the session's home is its first successor on the model's ring (Index)
// that is still a candidate, so it stays put while its instance can take
// it, and only the sessions of an instance that goes move.
type sessionAffinity struct{}

func (sessionAffinity) Name() string { return ScorerSession }
func (sessionAffinity) Score(req Request, cands []Candidate, out []float64) {
	for _, id := range req.sessionOrder {
		for i, c := range cands {
			if c.Inst.ID == id {
				out[i] = 1
				return
			}
		}
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
func (p prefixAffinity) Score(req Request, cands []Candidate, out []float64) {
	if p.table == nil || len(req.PrefixHashes) == 0 {
		return
	}
	lo, hi := cands[0].busy(), cands[0].busy()
	for _, c := range cands[1:] {
		lo, hi = min(lo, c.busy()), max(hi, c.busy())
	}
	if hi-lo > p.absGap && float64(hi) > p.relGap*float64(lo) {
		return
	}
	owners := p.table.owners(req.PrefixHashes)
	for i, c := range cands {
		for j := len(owners) - 1; j >= 0; j-- {
			if owners[j] == c.Inst.ID {
				out[i] = float64(j+1) / float64(len(req.PrefixHashes))
				break
			}
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

func (t *PrefixTable) owners(hashes []uint64) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, len(hashes))
	for i, h := range hashes {
		if e, ok := t.m[h]; ok {
			out[i] = e.Value.(prefixEntry).id
		}
	}
	return out
}

// Observe records that the request's blocks went to inst.
func (t *PrefixTable) Observe(req Request, inst instance.Instance) {
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
