package engine

import (
	"context"
	"fmt"
	"net/http"
)

// SGLang is `python -m sglang.launch_server`.
//
// --context-length is per request and --max-running-requests the number
// served at once, so Ctx and Slots map one to one. SGLang reads its API
// key from --api-key only, so the key is on the command line (readable by
// local users in the process list): run it on a node where that is
// acceptable, or leave APIKey empty and bind the engine to loopback.
type SGLang struct{}

func init() { Register(SGLang{}) }

func (SGLang) Name() string          { return "sglang" }
func (SGLang) DefaultBinary() string { return "python3" }
func (SGLang) TakesAPIKey() bool     { return true }

func (SGLang) APIs() []string {
	return []string{"/v1/chat/completions", "/v1/completions"}
}

// APIsFor: SGLang serves /v1/responses from 0.5.0; it has no Anthropic
// endpoint of its own (the router translates Messages to chat).
func (a SGLang) APIsFor(version string) []string {
	return sinceVersion(version, a.APIs(), map[string][]string{"0.5.0": {PathResponses}})
}

func (a SGLang) Command(binary string, s Spec) (Command, error) {
	if err := checkSpec(a.Name(), s, true); err != nil {
		return Command{}, err
	}
	if binary == "" {
		binary = a.DefaultBinary()
	}
	args := []string{"-m", "sglang.launch_server",
		"--model-path", s.Model,
		"--served-model-name", s.ModelName,
		"--host", s.Host,
		"--port", itoa(s.Port),
		"--enable-metrics",
	}
	if s.Ctx > 0 {
		args = append(args, "--context-length", itoa(s.Ctx))
	}
	if s.Slots > 0 {
		args = append(args, "--max-running-requests", itoa(s.Slots))
	}
	if s.APIKey != "" {
		args = append(args, "--api-key", s.APIKey)
	}
	args = append(args, s.ExtraArgs...)
	return Command{Path: binary, Args: args}, nil
}

// Ready: /health is 200 once the server is up with its model loaded.
func (SGLang) Ready(ctx context.Context, c *http.Client, base string, s Spec) error {
	if _, err := get(ctx, c, base+"/health", s.APIKey); err != nil {
		return fmt.Errorf("sglang not ready: %w", err)
	}
	return nil
}

// Version is the "version" field of /get_server_info.
func (SGLang) Version(ctx context.Context, c *http.Client, base string, s Spec) (string, error) {
	var v struct {
		Version string `json:"version"`
	}
	if err := getJSON(ctx, c, base+"/get_server_info", s.APIKey, &v); err != nil {
		return "", fmt.Errorf("sglang version: %w", err)
	}
	if v.Version == "" {
		return "", fmt.Errorf("sglang version: /get_server_info has no version")
	}
	return v.Version, nil
}

// Load: sglang:num_running_reqs, sglang:num_queue_reqs and
// sglang:token_usage (the KV pool's used fraction).
func (SGLang) Load(ctx context.Context, c *http.Client, base string, s Spec) (Load, error) {
	m, err := scrape(ctx, c, base+"/metrics", s.APIKey)
	if err != nil {
		return Load{}, fmt.Errorf("sglang load: %w", err)
	}
	running, okR := m.sum("sglang:num_running_reqs")
	queued, okQ := m.sum("sglang:num_queue_reqs")
	if !okR && !okQ {
		return Load{}, fmt.Errorf("sglang load: /metrics has no sglang:num_running_reqs or sglang:num_queue_reqs (started without --enable-metrics?)")
	}
	l := Load{Known: true, SlotsBusy: int(running), QueueLen: int(queued)}
	if s.Slots > 0 {
		l.SlotsFree = max(s.Slots-l.SlotsBusy, 0)
	}
	l.Cache = sglangCache(m)
	if v, ok := m.max("sglang:token_usage"); ok {
		l.KVCacheUsage, l.KVKnown = clampUnit(v), true
	}
	return l, nil
}
