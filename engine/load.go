package engine

// Prompt-cache figures, per engine. Placement wants to know not only how
// busy an engine is but whether sending a conversation back to it paid
// off: the engines count prompt tokens they served from their prefix
// cache, and the router turns the counters into a hit rate over its own
// polling window (see router/enginestate).
//
// What each engine exposes (the versions recorded under testdata):
//   - llama-server /metrics: llamacpp:prompt_tokens_total (prompt tokens
//     evaluated, cached ones excluded) and llamacpp:prompt_tokens_cached_total.
//   - vLLM V1 /metrics: vllm:prefix_cache_queries_total and
//     vllm:prefix_cache_hits_total (tokens); V0 only a gauge,
//     vllm:gpu_prefix_cache_hit_rate.
//   - SGLang /metrics: sglang:cache_hit_rate (a gauge); newer builds also
//     count sglang:prompt_tokens_total and sglang:cached_tokens_total.
//   - TGI and Ollama: nothing about a prefix cache.

// CacheStats is an engine's prompt-cache report.
type CacheStats struct {
	// Counters: PromptTokens (all prompt tokens, cached included) and
	// CachedTokens (those served from the cache), cumulative since the
	// engine started. Valid when Counters is set.
	Counters     bool
	PromptTokens float64
	CachedTokens float64
	// Rate is the engine's own hit-rate gauge (0..1) for engines that
	// publish a rate rather than counters; valid when RateKnown is set.
	RateKnown bool
	Rate      float64
}

// HitRate is the cache hit rate the stats give by themselves: the counters'
// ratio since the engine started, else the engine's own gauge.
func (c CacheStats) HitRate() (float64, bool) {
	switch {
	case c.Counters && c.PromptTokens > 0:
		return clampUnit(c.CachedTokens / c.PromptTokens), true
	case c.RateKnown:
		return clampUnit(c.Rate), true
	}
	return 0, false
}

// llamaCache reads llama-server's counters. prompt_tokens_total leaves
// the cached tokens out, so the prompt total is the sum of the two.
func llamaCache(m metrics) CacheStats {
	evaluated, okE := m.sum("llamacpp:prompt_tokens_total")
	cached, okC := m.sum("llamacpp:prompt_tokens_cached_total")
	if !okE || !okC {
		return CacheStats{}
	}
	return CacheStats{Counters: true, PromptTokens: evaluated + cached, CachedTokens: cached}
}

// vllmCache reads vLLM's prefix-cache counters (V1), else its V0 gauge.
func vllmCache(m metrics) CacheStats {
	queries, okQ := m.sum("vllm:prefix_cache_queries_total")
	hits, okH := m.sum("vllm:prefix_cache_hits_total")
	if okQ && okH {
		return CacheStats{Counters: true, PromptTokens: queries, CachedTokens: hits}
	}
	if v, ok := m.max("vllm:gpu_prefix_cache_hit_rate"); ok {
		return CacheStats{RateKnown: true, Rate: clampUnit(v)}
	}
	return CacheStats{}
}

// sglangCache reads SGLang's token counters where the build has them, else
// its hit-rate gauge.
func sglangCache(m metrics) CacheStats {
	prompt, okP := m.sum("sglang:prompt_tokens_total")
	cached, okC := m.sum("sglang:cached_tokens_total")
	if okP && okC {
		return CacheStats{Counters: true, PromptTokens: prompt, CachedTokens: cached}
	}
	if v, ok := m.max("sglang:cache_hit_rate"); ok {
		return CacheStats{RateKnown: true, Rate: clampUnit(v)}
	}
	return CacheStats{}
}
