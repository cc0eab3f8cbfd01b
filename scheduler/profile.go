package scheduler

import (
	"bytes"
	"fmt"
	"os"
	"sort"

	"gopkg.in/yaml.v3"
)

// Picker appends the best k scored candidates to top in order; the first
// is the choice.
type Picker interface {
	Name() string
	Pick(s, top []scored, k int) []scored
}

// maxScore orders by score, highest first; ties by (node id, instance id),
// which is the order of positions in the index's sorted model list. It
// selects the top k in one pass (insertion into a k-long list) instead of
// sorting every candidate.
type maxScore struct{}

func better(a, b scored) bool {
	if a.score != b.score {
		return a.score > b.score
	}
	return a.c.pos < b.c.pos
}

func (maxScore) Name() string { return "max-score" }
func (maxScore) Pick(s, top []scored, k int) []scored {
	for _, x := range s {
		if len(top) == k && !better(x, top[k-1]) {
			continue
		}
		i := sort.Search(len(top), func(i int) bool { return better(x, top[i]) })
		top = append(top, scored{})
		copy(top[i+1:], top[i:])
		top[i] = x
		if len(top) > k {
			top = top[:k]
		}
	}
	return top
}

// WeightedScorer is a scorer with its weight in a profile.
type WeightedScorer struct {
	Scorer Scorer
	Weight float64
}

// Profile is an assembled pipeline.
type Profile struct {
	Filters []Filter
	Scorers []WeightedScorer
	Picker  Picker
}

// ProfileConfig names the plugins of a profile (YAML or JSON).
type ProfileConfig struct {
	Filters []string        `yaml:"filters" json:"filters"`
	Scorers []ScorerWeights `yaml:"scorers" json:"scorers"`
	Picker  string          `yaml:"picker" json:"picker"`
	// Prefix-affinity stands aside when the busiest candidate has more
	// than PrefixAbsGap more requests than the idlest and more than
	// PrefixRelGap times as many.
	PrefixAbsGap int     `yaml:"prefix_abs_gap" json:"prefix_abs_gap"`
	PrefixRelGap float64 `yaml:"prefix_rel_gap" json:"prefix_rel_gap"`
	// BoundedLoad is cache-affinity's ε: an instance with more than
	// (1+ε)× the candidates' mean load passes the conversation to the next
	// on the ring (0: the default, 0.25, KubeAI's 125 %).
	BoundedLoad float64 `yaml:"bounded_load" json:"bounded_load"`
}

// ScorerWeights is one scorer and its weight.
type ScorerWeights struct {
	Name   string  `yaml:"name" json:"name"`
	Weight float64 `yaml:"weight" json:"weight"`
}

// DefaultProfileConfig: every filter; session affinity outweighs
// everything (a session stays put while its instance can take it), then
// cache affinity (the conversation's ring home under bounded load, which
// every router agrees on), this router's prefix history, load and KV
// headroom — the weights the Gateway API inference extension ships
// (prefix 3, queue 2, KV 2), with KV at 1 since our engines report it less
// reliably.
func DefaultProfileConfig() ProfileConfig {
	return ProfileConfig{
		Filters: []string{FilterPin, FilterHealthy, FilterPath, FilterContext, FilterDevice, FilterEjected, FilterPools, FilterCapacity},
		Scorers: []ScorerWeights{
			{ScorerSession, 10}, {ScorerCache, 4}, {ScorerPrefix, 3}, {ScorerLeastLoaded, 2}, {ScorerKVHeadroom, 1},
		},
		Picker:       "max-score",
		PrefixAbsGap: 8,
		PrefixRelGap: 1.5,
	}
}

// LoadProfileConfig reads a profile file; unknown keys are errors.
func LoadProfileConfig(path string) (ProfileConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return ProfileConfig{}, fmt.Errorf("scheduler profile: %w", err)
	}
	var c ProfileConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return ProfileConfig{}, fmt.Errorf("scheduler profile %s: %w", path, err)
	}
	return c, nil
}

// Build assembles the profile; table is the router's prefix history.
func (c ProfileConfig) Build(table *PrefixTable) (Profile, error) {
	var p Profile
	filters := map[string]Filter{
		FilterPin: pinFilter{}, FilterHealthy: healthyFilter, FilterPath: pathFilter, FilterContext: contextFilter,
		FilterDevice: deviceFilter, FilterEjected: ejectedFilter, FilterPools: poolsFilter{}, FilterCapacity: capacityFilter,
	}
	for _, n := range c.Filters {
		f, ok := filters[n]
		if !ok {
			return Profile{}, fmt.Errorf("scheduler profile: unknown filter %q (known: pin, healthy, path, context, device, not-ejected, pools, capacity)", n)
		}
		p.Filters = append(p.Filters, f)
	}
	abs, rel := c.PrefixAbsGap, c.PrefixRelGap
	if abs == 0 {
		abs = 8
	}
	if rel == 0 {
		rel = 1.5
	}
	for i, sw := range c.Scorers {
		if sw.Weight < 0 {
			return Profile{}, fmt.Errorf("scheduler profile: scorers[%d].weight %v is negative", i, sw.Weight)
		}
		var s Scorer
		switch sw.Name {
		case ScorerLeastLoaded:
			s = leastLoaded{}
		case ScorerKVHeadroom:
			s = kvHeadroom{}
		case ScorerSession:
			s = sessionAffinity{}
		case ScorerPrefix:
			s = prefixAffinity{table: table, absGap: abs, relGap: rel}
		case ScorerCache:
			eps := c.BoundedLoad
			if eps == 0 {
				eps = DefaultBoundedLoad
			}
			if eps < 0 {
				return Profile{}, fmt.Errorf("scheduler profile: bounded_load %v is negative", eps)
			}
			s = cacheAffinity{eps: eps}
		default:
			return Profile{}, fmt.Errorf("scheduler profile: unknown scorer %q (known: least-loaded, kv-headroom, prefix-affinity, cache-affinity, session-affinity)", sw.Name)
		}
		p.Scorers = append(p.Scorers, WeightedScorer{s, sw.Weight})
	}
	switch c.Picker {
	case "", "max-score":
		p.Picker = maxScore{}
	default:
		return Profile{}, fmt.Errorf("scheduler profile: unknown picker %q (known: max-score)", c.Picker)
	}
	return p, nil
}
