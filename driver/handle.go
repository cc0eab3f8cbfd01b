package driver

import (
	"context"
	"sync"
	"time"

	"github.com/llorch/llorch/engine"
)

// taskHandle is one task this plugin process manages (started here or
// recovered). announce.go, gpu.go and catalog.go read it through the
// accessors below.
type taskHandle struct {
	st taskState

	// apiKey is the engine API key read from engine_token_file at start or
	// recovery; kept in memory only.
	apiKey string

	// ctx ends when the task exits, is stopped or destroyed: goroutines
	// working for a task (readiness probes, registry heartbeats) use it as
	// their owner.
	ctx    context.Context
	cancel context.CancelFunc

	mu          sync.Mutex
	exited      chan struct{}
	exit        exitRecord
	completedAt time.Time
}

func newHandle(st taskState, apiKey string) *taskHandle {
	ctx, cancel := context.WithCancel(context.Background())
	return &taskHandle{st: st, apiKey: apiKey, ctx: ctx, cancel: cancel, exited: make(chan struct{})}
}

// Accessors for the seams (announce.go, gpu.go, catalog.go).

func (h *taskHandle) TaskID() string                   { return h.st.TaskID }
func (h *taskHandle) AllocID() string                  { return h.st.AllocID }
func (h *taskHandle) TaskName() string                 { return h.st.TaskName }
func (h *taskHandle) NodeID() string                   { return h.st.NodeID }
func (h *taskHandle) NodeName() string                 { return h.st.NodeName }
func (h *taskHandle) Config() TaskConfig               { return h.st.Config }
func (h *taskHandle) EngineName() string               { return h.st.Engine }
func (h *taskHandle) Spec() engine.Spec                { s := h.st.Spec; s.APIKey = h.apiKey; return s }
func (h *taskHandle) Host() string                     { return h.st.Host }
func (h *taskHandle) BindHost() string                 { return h.st.BindHost }
func (h *taskHandle) Port() int                        { return h.st.Port }
func (h *taskHandle) PoolID() string                   { return h.st.PoolID }
func (h *taskHandle) ServiceName() string              { return h.st.ServiceName }
func (h *taskHandle) InstanceID() string               { return h.st.InstanceID }
func (h *taskHandle) Pid() int                         { return h.st.EnginePID.PID }
func (h *taskHandle) Env() map[string]string           { return h.st.Env }
func (h *taskHandle) StateDir() string                 { return h.st.StateDir }
func (h *taskHandle) Context() context.Context         { return h.ctx }
func (h *taskHandle) Exited() <-chan struct{}          { return h.exited }
func (h *taskHandle) Adapter() (engine.Adapter, error) { return engine.Get(h.st.Engine) }

// BaseURL is where the engine serves HTTP, as the router reaches it.
func (h *taskHandle) BaseURL() string {
	if h.st.TLS() {
		return "https://" + joinHostPort(h.st.Host, h.st.Port)
	}
	return "http://" + joinHostPort(h.st.Host, h.st.Port)
}

func (h *taskHandle) isExited() bool {
	select {
	case <-h.exited:
		return true
	default:
		return false
	}
}

// markExited records the exit once; later calls are ignored.
func (h *taskHandle) markExited(rec exitRecord) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.isExited() {
		return false
	}
	if rec.CompletedAt.IsZero() {
		rec.CompletedAt = time.Now()
	}
	h.exit = rec
	h.completedAt = rec.CompletedAt
	close(h.exited)
	h.cancel()
	return true
}

func (h *taskHandle) exitResult() (exitRecord, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.exit, h.isExited()
}
