package router

import (
	_ "embed"
	"net/http"
	"sync"
	"time"
)

//go:embed ui/index.html
var uiPage []byte

// serveUI serves the cluster page. The page is a static shell with no
// cluster data: it reads the authenticated /v2 API with the token the user
// enters (a browser cannot send a bearer token on navigation), so it is the
// one page exempt from auth besides /healthz.
func (rt *Router) serveUI(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
	h.Set("X-Frame-Options", "DENY")
	_, _ = w.Write(uiPage)
}

// recentErrors keeps the last failures the router answered, for /ui.
type recentErrors struct {
	mu   sync.Mutex
	list []uiError
}

type uiError struct {
	Time   string `json:"time"`
	Status int    `json:"status"`
	Error  string `json:"error"` // the status's text; the body's code is in the log line
	Path   string `json:"path"`
}

const maxRecentErrors = 20

func (e *recentErrors) add(status int, path string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, uiError{Time: time.Now().UTC().Format(time.RFC3339), Status: status, Error: http.StatusText(status), Path: path})
	if len(e.list) > maxRecentErrors {
		e.list = e.list[len(e.list)-maxRecentErrors:]
	}
}

func (e *recentErrors) snapshot() []uiError {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]uiError, len(e.list))
	for i := range e.list {
		out[i] = e.list[len(e.list)-1-i] // newest first
	}
	return out
}

// serveUIState handles GET /v2/ui/state: what the page shows besides
// /v2/nodes.
func (rt *Router) serveUIState(w http.ResponseWriter, r *http.Request) {
	i, b := rt.queues.TotalDepth()
	writeJSON(w, http.StatusOK, map[string]any{
		"queue":         map[string]int{"interactive": i, "batch": b},
		"recent_errors": rt.errors.snapshot(),
		"pools":         rt.demandPools(),
		"snapshot_age_ms": func() int64 {
			if a := rt.view.Age(); a >= 0 {
				return a.Milliseconds()
			}
			return -1
		}(),
	})
}
