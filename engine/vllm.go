package engine

import (
	"context"
	"fmt"
	"net/http"
)

// VLLM is vLLM's OpenAI-compatible server (`vllm serve`).
//
// --max-model-len is per sequence and --max-num-seqs is the number of
// sequences batched at once, so Ctx and Slots map one to one. The API key
// goes in VLLM_API_KEY, which vLLM reads like --api-key; it guards the /v1
// paths only (/health, /version and /metrics stay open).
type VLLM struct{}

func init() { Register(VLLM{}) }

func (VLLM) Name() string          { return "vllm" }
func (VLLM) DefaultBinary() string { return "vllm" }
func (VLLM) TakesAPIKey() bool     { return true }

func (VLLM) APIs() []string {
	return []string{"/v1/chat/completions", "/v1/completions"}
}

// APIsFor: vLLM serves /v1/responses from 0.10.0 and Anthropic's
// /v1/messages from the 0.12 line (declared conservatively: earlier
// versions get the router's Messages→chat translation instead).
func (a VLLM) APIsFor(version string) []string {
	return sinceVersion(version, a.APIs(), map[string][]string{
		"0.10.0": {PathResponses},
		"0.12.0": {PathMessages},
	})
}

func (VLLM) servesTLS() {}

func (a VLLM) Command(binary string, s Spec) (Command, error) {
	if err := checkSpec(a.Name(), s, true); err != nil {
		return Command{}, err
	}
	if binary == "" {
		binary = a.DefaultBinary()
	}
	args := []string{"serve", s.Model,
		"--host", s.Host,
		"--port", itoa(s.Port),
		"--served-model-name", s.ModelName,
	}
	if s.Ctx > 0 {
		args = append(args, "--max-model-len", itoa(s.Ctx))
	}
	if s.Slots > 0 {
		args = append(args, "--max-num-seqs", itoa(s.Slots))
	}
	// GPULayers and Threads do not apply: vLLM keeps the whole model on the
	// GPUs it is given (CUDA_VISIBLE_DEVICES, set by the driver).
	if s.TLSCertFile != "" {
		args = append(args, "--ssl-certfile", s.TLSCertFile, "--ssl-keyfile", s.TLSKeyFile)
	}
	args = append(args, s.ExtraArgs...)
	var env []string
	if s.APIKey != "" {
		env = append(env, "VLLM_API_KEY="+s.APIKey)
	}
	return Command{Path: binary, Args: args, Env: env}, nil
}

// Ready: /health is 200 once the engine has started (it is served only
// after the model is loaded).
func (VLLM) Ready(ctx context.Context, c *http.Client, base string, s Spec) error {
	if _, err := get(ctx, c, base+"/health", s.APIKey); err != nil {
		return fmt.Errorf("vllm not ready: %w", err)
	}
	return nil
}

// Version is /version's {"version": "..."}.
func (VLLM) Version(ctx context.Context, c *http.Client, base string, s Spec) (string, error) {
	var v struct {
		Version string `json:"version"`
	}
	if err := getJSON(ctx, c, base+"/version", s.APIKey, &v); err != nil {
		return "", fmt.Errorf("vllm version: %w", err)
	}
	if v.Version == "" {
		return "", fmt.Errorf("vllm version: /version has no version")
	}
	return v.Version, nil
}

// Load: vllm:num_requests_running / _waiting, and the KV-cache usage under
// its current name (kv_cache_usage_perc) or the one before (gpu_cache_usage_perc);
// both are ratios 0..1 despite the "perc".
func (VLLM) Load(ctx context.Context, c *http.Client, base string, s Spec) (Load, error) {
	m, err := scrape(ctx, c, base+"/metrics", s.APIKey)
	if err != nil {
		return Load{}, fmt.Errorf("vllm load: %w", err)
	}
	running, okR := m.sum("vllm:num_requests_running")
	waiting, okW := m.sum("vllm:num_requests_waiting")
	if !okR && !okW {
		return Load{}, fmt.Errorf("vllm load: /metrics has no vllm:num_requests_running or vllm:num_requests_waiting")
	}
	l := Load{Known: true, SlotsBusy: int(running), QueueLen: int(waiting)}
	if s.Slots > 0 {
		l.SlotsFree = max(s.Slots-l.SlotsBusy, 0)
	}
	l.Cache = vllmCache(m)
	if v, ok := m.first(m.max, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"); ok {
		l.KVCacheUsage, l.KVKnown = clampUnit(v), true
	}
	return l, nil
}
