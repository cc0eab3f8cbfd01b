package router

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
)

// CorrelationHeader carries a request's id from the client to the engine
// and back on every response.
const CorrelationHeader = "X-Correlation-Id"

// maxCorrelationLen bounds an id taken from a client.
const maxCorrelationLen = 128

// saneCorrelationID accepts what can safely be echoed in a header and a log
// line: 1..128 printable ASCII characters, no spaces.
func saneCorrelationID(s string) bool {
	if len(s) == 0 || len(s) > maxCorrelationLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// reqInfo is per-request state shared by the middleware and the handlers.
type reqInfo struct {
	id    string
	base  hclog.Logger
	lg    hclog.Logger // base.With(correlation_id), built on first use
	model string       // metrics label; set by handlers that know the model
	// instance and node that answered, for the access log.
	instance, node string
	// identity is who authenticated ("token:9f86d0", "key:team-a"): the
	// access log names the key, never its secret.
	identity string
}

// logger is the request's logger, carrying its correlation id. It is built
// on first use: hclog's With copies, and most requests never log.
func (ri *reqInfo) logger() hclog.Logger {
	if ri.lg == nil {
		ri.lg = ri.base.With("correlation_id", ri.id)
	}
	return ri.lg
}

type ctxKey struct{}

func infoFrom(ctx context.Context) *reqInfo {
	if ri, ok := ctx.Value(ctxKey{}).(*reqInfo); ok {
		return ri
	}
	return &reqInfo{base: hclog.NewNullLogger()}
}

// statusWriter remembers the status for metrics. FlushError passes the
// connection's flush error on (a plain Flush would swallow it, and
// http.ResponseController prefers FlushError); Unwrap lets the controller
// reach the connection's other methods (SetWriteDeadline).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush is for http.Flusher users; errors are only seen through FlushError.
func (w *statusWriter) Flush() { _ = w.FlushError() }

func (w *statusWriter) FlushError() error {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// withRequestContext runs outside authentication, so every response (401s
// included) carries the correlation id and is counted.
func (rt *Router) withRequestContext(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(CorrelationHeader)
		if !saneCorrelationID(id) {
			id = uuid.NewString()
		}
		ri := &reqInfo{id: id, base: rt.log, model: unknownModel}
		w.Header().Set(CorrelationHeader, id)
		sw := &statusWriter{ResponseWriter: w}
		start := time.Now()
		defer func() {
			// Deferred so an aborted response (http.ErrAbortHandler)
			// is counted too.
			status := sw.status
			if status == 0 {
				status = 499 // the client went away before any answer
			}
			rt.metrics.requests.WithLabelValues(pathLabel(r.URL.Path), ri.model, strconv.Itoa(status)).Inc()
			if status >= 500 || status == http.StatusTooManyRequests {
				rt.errors.add(status, pathLabel(r.URL.Path))
			}
			// One access line per request (level info; LLORCH_LOG_LEVEL=warn
			// turns it off), carrying the correlation id like every line.
			if rt.log.IsInfo() {
				ri.logger().Info("request", "method", r.Method, "path", r.URL.Path, "status", status, "model", ri.model,
					"instance_id", ri.instance, "node_id", ri.node, "identity", ri.identity, "duration_ms", float64(time.Since(start).Microseconds())/1000)
			}
		}()
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), ctxKey{}, ri)))
	})
}

// pathLabel keeps the path label's values to a known set.
func pathLabel(p string) string {
	switch p {
	case "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/healthz", "/metrics":
		return p
	}
	if len(p) > len("/v1/models/") && p[:len("/v1/models/")] == "/v1/models/" {
		return "/v1/models/{model}"
	}
	switch {
	case p == "/v2/tasks", p == "/v2/nodes", p == "/v2/catalog/availability", p == "/v2/meta/capabilities", p == "/v2/sd/prometheus", p == "/v2/ui/state", p == "/v2/usage", p == "/ui":
		return p
	case strings.HasPrefix(p, "/v2/tasks/") && strings.HasSuffix(p, "/events"):
		return "/v2/tasks/{id}/events"
	case strings.HasPrefix(p, "/v2/tasks/") && strings.HasSuffix(p, "/cancel"):
		return "/v2/tasks/{id}/cancel"
	}
	return "other"
}
