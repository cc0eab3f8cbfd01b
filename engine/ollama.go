package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// Ollama is `ollama serve` with one model created from the spec's GGUF.
//
// Ollama keeps state (its model store, and a key pair under $HOME), so it
// runs with HOME and OLLAMA_MODELS inside the task's StateDir. Ctx is per
// slot: Ollama allocates num_ctx × OLLAMA_NUM_PARALLEL itself. Ollama has
// no API key: it must be bound where only the router path reaches it.
type Ollama struct{}

func init() { Register(Ollama{}) }

func (Ollama) Name() string          { return "ollama" }
func (Ollama) DefaultBinary() string { return "ollama" }
func (Ollama) TakesAPIKey() bool     { return false }

func (Ollama) APIs() []string {
	return []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}
}

// APIsFor: Ollama serves Anthropic's /v1/messages from 0.14.0.
func (a Ollama) APIsFor(version string) []string {
	return sinceVersion(version, a.APIs(), map[string][]string{"0.14.0": {PathMessages}})
}

func (a Ollama) Command(binary string, s Spec) (Command, error) {
	if err := checkSpec(a.Name(), s, true); err != nil {
		return Command{}, err
	}
	if s.StateDir == "" {
		return Command{}, fmt.Errorf("ollama: spec.state_dir is required (Ollama keeps its model store and key pair there)")
	}
	if binary == "" {
		binary = a.DefaultBinary()
	}
	host := s.Host
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	env := []string{
		"HOME=" + s.StateDir,
		"OLLAMA_MODELS=" + filepath.Join(s.StateDir, "models"),
		"OLLAMA_HOST=" + host + ":" + itoa(s.Port),
		// One task, one model, loaded for the task's whole life: without
		// these Ollama unloads it after 5 idle minutes.
		"OLLAMA_KEEP_ALIVE=-1",
		"OLLAMA_MAX_LOADED_MODELS=1",
	}
	if s.Slots > 0 {
		env = append(env, "OLLAMA_NUM_PARALLEL="+itoa(s.Slots))
	}
	if s.Ctx > 0 {
		env = append(env, "OLLAMA_CONTEXT_LENGTH="+itoa(s.Ctx))
	}
	args := append([]string{"serve"}, s.ExtraArgs...)
	return Command{Path: binary, Args: args, Env: env}, nil
}

// ollamaName is how Ollama lists a model: an untagged name gets ":latest".
func ollamaName(n string) string {
	if strings.Contains(n, ":") {
		return n
	}
	return n + ":latest"
}

type ollamaModels struct {
	Models []struct {
		Name  string `json:"name"`
		Model string `json:"model"`
	} `json:"models"`
}

func (m ollamaModels) has(name string) bool {
	want := ollamaName(name)
	for _, x := range m.Models {
		if ollamaName(x.Name) == want || ollamaName(x.Model) == want {
			return true
		}
	}
	return false
}

// Ready walks Ollama's steps, each only when needed, so calling it again
// after a partial failure resumes where it stopped: the server answers →
// the model exists (else: upload the GGUF as a blob and create it) → the
// model is loaded (else: a warm-up /api/generate with an empty prompt
// loads it).
func (Ollama) Ready(ctx context.Context, c *http.Client, base string, s Spec) error {
	if _, err := get(ctx, c, base+"/api/version", ""); err != nil {
		return fmt.Errorf("ollama not answering: %w", err)
	}
	var ps ollamaModels
	if err := getJSON(ctx, c, base+"/api/ps", "", &ps); err != nil {
		return fmt.Errorf("ollama: list loaded models: %w", err)
	}
	if ps.has(s.ModelName) {
		return nil
	}
	var tags ollamaModels
	if err := getJSON(ctx, c, base+"/api/tags", "", &tags); err != nil {
		return fmt.Errorf("ollama: list models: %w", err)
	}
	if !tags.has(s.ModelName) {
		if err := ollamaCreate(ctx, c, base, s); err != nil {
			return err
		}
	}
	warm := map[string]any{"model": s.ModelName, "prompt": "", "stream": false, "keep_alive": -1}
	if err := postJSON(ctx, c, base+"/api/generate", "", warm, nil); err != nil {
		return fmt.Errorf("ollama: load model %s: %w", s.ModelName, err)
	}
	if err := getJSON(ctx, c, base+"/api/ps", "", &ps); err != nil {
		return fmt.Errorf("ollama: list loaded models: %w", err)
	}
	if !ps.has(s.ModelName) {
		return fmt.Errorf("ollama: model %s not loaded after warm-up", s.ModelName)
	}
	return nil
}

// ollamaCreate uploads the GGUF (unless the server has the blob) and
// creates the model from it: Ollama's API creates models from blobs named
// by their sha256, not from paths.
func ollamaCreate(ctx context.Context, c *http.Client, base string, s Spec) error {
	digest, err := fileSHA256(s.Model)
	if err != nil {
		return fmt.Errorf("ollama: %w", err)
	}
	blobURL := base + "/api/blobs/sha256:" + digest
	if _, err := request(ctx, c, http.MethodHead, blobURL, "", nil, ""); err != nil {
		var se *StatusError
		if !errors.As(err, &se) || se.Status != http.StatusNotFound {
			return fmt.Errorf("ollama: check blob: %w", err)
		}
		f, err := os.Open(s.Model)
		if err != nil {
			return fmt.Errorf("ollama: open model: %w", err)
		}
		defer f.Close()
		if _, err := request(ctx, c, http.MethodPost, blobURL, "", f, "application/octet-stream"); err != nil {
			return fmt.Errorf("ollama: upload %s: %w", s.Model, err)
		}
	}
	create := map[string]any{
		"model":  s.ModelName,
		"files":  map[string]string{filepath.Base(s.Model): "sha256:" + digest},
		"stream": false,
	}
	params := map[string]any{}
	if s.Ctx > 0 {
		params["num_ctx"] = s.Ctx
	}
	if s.GPULayers == -1 {
		params["num_gpu"] = 999
	} else if s.GPULayers > 0 {
		params["num_gpu"] = s.GPULayers
	}
	if s.Threads > 0 {
		params["num_thread"] = s.Threads
	}
	if len(params) > 0 {
		create["parameters"] = params
	}
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	if err := postJSON(ctx, c, base+"/api/create", "", create, &out); err != nil {
		return fmt.Errorf("ollama: create model %s: %w", s.ModelName, err)
	}
	if out.Error != "" {
		return fmt.Errorf("ollama: create model %s: %s", s.ModelName, out.Error)
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash model: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash model %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Version is /api/version's "version".
func (Ollama) Version(ctx context.Context, c *http.Client, base string, s Spec) (string, error) {
	var v struct {
		Version string `json:"version"`
	}
	if err := getJSON(ctx, c, base+"/api/version", "", &v); err != nil {
		return "", fmt.Errorf("ollama version: %w", err)
	}
	if v.Version == "" {
		return "", fmt.Errorf("ollama version: /api/version has no version")
	}
	return v.Version, nil
}

// Load: Ollama reports which models are loaded (/api/ps) but no busy or
// queued counts, so the load is unknown; an unloaded model is an error.
func (Ollama) Load(ctx context.Context, c *http.Client, base string, s Spec) (Load, error) {
	var ps ollamaModels
	if err := getJSON(ctx, c, base+"/api/ps", "", &ps); err != nil {
		return Load{}, fmt.Errorf("ollama load: %w", err)
	}
	if !ps.has(s.ModelName) {
		return Load{}, fmt.Errorf("ollama load: model %s is not loaded", s.ModelName)
	}
	return Load{Known: false}, nil
}
