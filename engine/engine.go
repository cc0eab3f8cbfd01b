// Package engine holds one adapter per inference engine (llama.cpp's
// llama-server, vLLM, Ollama, SGLang, TGI). An adapter knows the engine's
// command line, how to tell it is ready, its version, its live load and the
// OpenAI-compatible paths it serves. Adapters do no process management: the
// driver and the home profile launch the command an adapter builds.
package engine

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"sync"
)

// Spec is what a task asks of an engine.
type Spec struct {
	// Model is the model file (GGUF for llama.cpp and Ollama) or the model
	// name/directory for engines that take one (vLLM, SGLang, TGI).
	Model string
	// ModelName is the name clients send in the request's "model" field.
	ModelName string
	Host      string
	Port      int
	Ctx       int // context length per slot; 0 = engine default
	Slots     int // parallel sequences; 0 = engine default
	GPULayers int // layers to offload; -1 = all, 0 = none/engine default
	Threads   int // CPU threads; 0 = engine default
	// APIKey, when set, is required by the engine on every request (for
	// engines that support one); the router presents it.
	APIKey    string
	ExtraArgs []string
	// StateDir is a private, writable directory for engines that keep state
	// (Ollama's model store and HOME).
	StateDir string
	// TLSCertFile and TLSKeyFile (both or neither) make the engine serve
	// HTTPS itself; only engines for which ServesTLS is true take them
	// (the others sit behind the task supervisor's relay, which serves TLS).
	TLSCertFile string
	TLSKeyFile  string
}

// tlsServer is an adapter whose engine serves HTTPS from a certificate and
// key file itself.
type tlsServer interface{ servesTLS() }

// ServesTLS reports whether a's engine takes Spec.TLSCertFile/TLSKeyFile.
func ServesTLS(a Adapter) bool {
	_, ok := a.(tlsServer)
	return ok
}

// Command is a program to run.
type Command struct {
	Path string
	Args []string
	Env  []string // extra KEY=VALUE pairs on top of the task's environment
}

// Load is an engine's live load as it reports it. Known is false when the
// engine does not expose a figure; fields are then zero.
type Load struct {
	Known        bool
	SlotsBusy    int
	SlotsFree    int
	QueueLen     int
	KVCacheUsage float64 // 0..1
	KVKnown      bool    // the engine reported KVCacheUsage
	// Cache is what the engine says about its prompt (prefix) cache; see
	// engine/load.go.
	Cache CacheStats
}

// Adapter is one inference engine.
type Adapter interface {
	// Name is the engine's name in task configs: llamacpp, vllm, ollama, sglang, tgi.
	Name() string
	// DefaultBinary is the program run when the config names none.
	DefaultBinary() string
	// Command builds the command line for the spec.
	Command(binary string, s Spec) (Command, error)
	// Ready returns nil once the engine at base (http://host:port) can serve
	// the spec's model; otherwise an error that says what it is waiting for.
	// For engines that need a step after start (Ollama's model create and
	// load), Ready performs it.
	Ready(ctx context.Context, c *http.Client, base string, s Spec) error
	// Version asks the running engine for its version.
	Version(ctx context.Context, c *http.Client, base string, s Spec) (string, error)
	// Load reads the engine's live load.
	Load(ctx context.Context, c *http.Client, base string, s Spec) (Load, error)
	// APIs lists the OpenAI-compatible paths the engine serves.
	APIs() []string
	// TakesAPIKey reports whether the engine enforces an API key itself; for
	// those that do not, the caller binds the engine to an address only the
	// router path reaches.
	TakesAPIKey() bool
}

var (
	mu       sync.RWMutex
	adapters = map[string]Adapter{}
)

// Register adds an adapter; each adapter file calls it from init.
func Register(a Adapter) {
	mu.Lock()
	defer mu.Unlock()
	adapters[a.Name()] = a
}

// Get returns the adapter for name, or an error naming the known engines.
func Get(name string) (Adapter, error) {
	mu.RLock()
	defer mu.RUnlock()
	if a, ok := adapters[name]; ok {
		return a, nil
	}
	return nil, fmt.Errorf("unknown engine %q (known: %v)", name, namesLocked())
}

// Names lists the registered engines, sorted.
func Names() []string {
	mu.RLock()
	defer mu.RUnlock()
	return namesLocked()
}

func namesLocked() []string {
	out := make([]string, 0, len(adapters))
	for n := range adapters {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
