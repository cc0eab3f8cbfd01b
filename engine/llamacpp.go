package engine

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// LlamaCpp is llama.cpp's llama-server.
//
// Context: llama-server's -c is the TOTAL KV context shared by its -np
// slots, so a spec asking for Ctx tokens per slot and Slots slots runs
// with -c Ctx*Slots. The API key goes in LLAMA_API_KEY (llama-server reads
// it like --api-key) so it never shows in the process list.
type LlamaCpp struct{}

func init() { Register(LlamaCpp{}) }

func (LlamaCpp) Name() string          { return "llamacpp" }
func (LlamaCpp) DefaultBinary() string { return "llama-server" }
func (LlamaCpp) TakesAPIKey() bool     { return true }

// APIs: the llama-server the project fetches (scripts/get-llama-server.sh)
// serves Anthropic Messages (with count_tokens) and OpenAI Responses
// natively besides chat and completions.
func (LlamaCpp) APIs() []string {
	return []string{"/v1/chat/completions", "/v1/completions",
		PathMessages, PathMessagesCountTokens, PathResponses, PathResponsesInputToks}
}

func (LlamaCpp) servesTLS() {}

func (a LlamaCpp) Command(binary string, s Spec) (Command, error) {
	if err := checkSpec(a.Name(), s, true); err != nil {
		return Command{}, err
	}
	if binary == "" {
		binary = a.DefaultBinary()
	}
	args := []string{
		"-m", s.Model,
		"--host", s.Host,
		"--port", itoa(s.Port),
		"--alias", s.ModelName,
	}
	switch {
	case s.Ctx > 0 && s.Slots > 0:
		args = append(args, "-c", itoa(s.Ctx*s.Slots))
	case s.Ctx > 0:
		args = append(args, "-c", itoa(s.Ctx))
	}
	if s.Slots > 0 {
		args = append(args, "-np", itoa(s.Slots))
	}
	switch {
	case s.GPULayers == -1:
		// A number every llama-server accepts and that exceeds any
		// model's layer count ("all" only exists in newer builds).
		args = append(args, "-ngl", "999")
	case s.GPULayers > 0:
		args = append(args, "-ngl", itoa(s.GPULayers))
	}
	if s.Threads > 0 {
		args = append(args, "-t", itoa(s.Threads))
	}
	// /metrics is off by default; /slots is on by default but say so, in
	// case a build changes that default: Load needs both.
	args = append(args, "--metrics", "--slots")
	if s.TLSCertFile != "" {
		// Read once at start: a rotated pair needs a restart (the router
		// retries around it).
		args = append(args, "--ssl-cert-file", s.TLSCertFile, "--ssl-key-file", s.TLSKeyFile)
	}
	args = append(args, s.ExtraArgs...)
	var env []string
	if s.APIKey != "" {
		env = append(env, "LLAMA_API_KEY="+s.APIKey)
	}
	return Command{Path: binary, Args: args, Env: env}, nil
}

// Ready: /health answers 200 once the model is loaded (503 while loading);
// it needs no API key.
func (LlamaCpp) Ready(ctx context.Context, c *http.Client, base string, s Spec) error {
	if _, err := get(ctx, c, base+"/health", ""); err != nil {
		var se *StatusError
		if errors.As(err, &se) && se.Status == http.StatusServiceUnavailable {
			return fmt.Errorf("llama-server is loading the model: %w", err)
		}
		return fmt.Errorf("llama-server not answering: %w", err)
	}
	return nil
}

// Version is /props' build_info, e.g. "b11669-Debian".
func (LlamaCpp) Version(ctx context.Context, c *http.Client, base string, s Spec) (string, error) {
	var p struct {
		BuildInfo string `json:"build_info"`
	}
	if err := getJSON(ctx, c, base+"/props", s.APIKey, &p); err != nil {
		return "", fmt.Errorf("llama-server version: %w", err)
	}
	if p.BuildInfo == "" {
		return "", fmt.Errorf("llama-server version: /props has no build_info")
	}
	return p.BuildInfo, nil
}

// Load reads busy/free slots from /slots and the queue and KV-cache usage
// from /metrics. Either alone is enough for a known load.
func (LlamaCpp) Load(ctx context.Context, c *http.Client, base string, s Spec) (Load, error) {
	var l Load
	var errs []string
	var slots []struct {
		IsProcessing bool `json:"is_processing"`
	}
	if err := getJSON(ctx, c, base+"/slots", s.APIKey, &slots); err != nil {
		errs = append(errs, err.Error())
	} else {
		l.Known = true
		for _, sl := range slots {
			if sl.IsProcessing {
				l.SlotsBusy++
			} else {
				l.SlotsFree++
			}
		}
	}
	if m, err := scrape(ctx, c, base+"/metrics", s.APIKey); err != nil {
		errs = append(errs, err.Error())
	} else {
		l.Known = true
		if v, ok := m.sum("llamacpp:requests_deferred"); ok {
			l.QueueLen = int(v)
		}
		l.Cache = llamaCache(m)
		if v, ok := m.max("llamacpp:kv_cache_usage_ratio"); ok {
			l.KVCacheUsage, l.KVKnown = clampUnit(v), true
		}
		if len(slots) == 0 {
			if v, ok := m.sum("llamacpp:requests_processing"); ok {
				l.SlotsBusy = int(v)
				if s.Slots > 0 {
					l.SlotsFree = max(s.Slots-l.SlotsBusy, 0)
				}
			}
		}
	}
	if !l.Known {
		return Load{}, fmt.Errorf("llama-server load: %s", strings.Join(errs, "; "))
	}
	return l, nil
}
