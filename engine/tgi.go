package engine

import (
	"context"
	"fmt"
	"net/http"
)

// TGI is Hugging Face's text-generation-launcher.
//
// TGI sizes by tokens, not slots: --max-total-tokens is the per-request
// budget (prompt + generation) and --max-concurrent-requests caps how many
// run or wait at once, so Ctx maps to the first and Slots to the second.
// The launcher's --api-key is also read from API_KEY, which is where the
// key goes (out of the process list).
type TGI struct{}

func init() { Register(TGI{}) }

func (TGI) Name() string          { return "tgi" }
func (TGI) DefaultBinary() string { return "text-generation-launcher" }
func (TGI) TakesAPIKey() bool     { return true }

func (TGI) APIs() []string {
	return []string{"/v1/chat/completions", "/v1/completions"}
}

func (a TGI) Command(binary string, s Spec) (Command, error) {
	if err := checkSpec(a.Name(), s, false); err != nil {
		return Command{}, err
	}
	if binary == "" {
		binary = a.DefaultBinary()
	}
	args := []string{
		"--model-id", s.Model,
		"--hostname", s.Host,
		"--port", itoa(s.Port),
	}
	if s.Ctx > 0 {
		args = append(args, "--max-total-tokens", itoa(s.Ctx))
		// TGI refuses max-input-tokens >= max-total-tokens; leave one
		// token for the answer at least.
		args = append(args, "--max-input-tokens", itoa(max(s.Ctx-1, 1)))
	}
	if s.Slots > 0 {
		args = append(args, "--max-concurrent-requests", itoa(s.Slots))
	}
	args = append(args, s.ExtraArgs...)
	var env []string
	if s.APIKey != "" {
		env = append(env, "API_KEY="+s.APIKey)
	}
	return Command{Path: binary, Args: args, Env: env}, nil
}

// Ready: /health is 200 once the shards answer.
func (TGI) Ready(ctx context.Context, c *http.Client, base string, s Spec) error {
	if _, err := get(ctx, c, base+"/health", s.APIKey); err != nil {
		return fmt.Errorf("tgi not ready: %w", err)
	}
	return nil
}

// Version is /info's "version".
func (TGI) Version(ctx context.Context, c *http.Client, base string, s Spec) (string, error) {
	var v struct {
		Version string `json:"version"`
	}
	if err := getJSON(ctx, c, base+"/info", s.APIKey, &v); err != nil {
		return "", fmt.Errorf("tgi version: %w", err)
	}
	if v.Version == "" {
		return "", fmt.Errorf("tgi version: /info has no version")
	}
	return v.Version, nil
}

// Load: tgi_batch_current_size (requests in the running batch) and
// tgi_queue_size (waiting). TGI exposes no KV-cache usage figure.
func (TGI) Load(ctx context.Context, c *http.Client, base string, s Spec) (Load, error) {
	m, err := scrape(ctx, c, base+"/metrics", s.APIKey)
	if err != nil {
		return Load{}, fmt.Errorf("tgi load: %w", err)
	}
	batch, okB := m.sum("tgi_batch_current_size")
	queue, okQ := m.sum("tgi_queue_size")
	if !okB && !okQ {
		return Load{}, fmt.Errorf("tgi load: /metrics has no tgi_batch_current_size or tgi_queue_size")
	}
	l := Load{Known: true, SlotsBusy: int(batch), QueueLen: int(queue)}
	if s.Slots > 0 {
		l.SlotsFree = max(s.Slots-l.SlotsBusy, 0)
	}
	return l, nil
}
