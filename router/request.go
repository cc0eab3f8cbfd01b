package router

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/internal/accesslog"
	"github.com/llorch/llorch/router/keys"
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
	// key is the team key the request authenticated with (nil: the API
	// token, or a loopback request without one).
	key *keys.Key
}

// attachAuth is the auth middleware's Attach: the verdict goes into the
// request's reqInfo, so no context or request copy is made for it.
func attachAuth(r *http.Request, identity string, key any) *http.Request {
	ri := infoFrom(r.Context())
	ri.identity = identity
	ri.key, _ = key.(*keys.Key)
	return r
}

// keyOf is the team key of the request ctx belongs to (nil: none).
func keyOf(ctx context.Context) *keys.Key { return infoFrom(ctx).key }

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

// requestState is what withRequestContext allocates per request.
type requestState struct {
	reqInfo
	statusWriter
	idHeader [1]string
}

// withRequestContext runs outside authentication, so every response (401s
// included) carries the correlation id and is counted. Its context is the
// request's only one: the auth verdict and everything handlers learn go
// into the reqInfo it carries.
func (rt *Router) withRequestContext(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var id string
		if v := r.Header[CorrelationHeader]; len(v) > 0 && saneCorrelationID(v[0]) {
			id = v[0]
		} else {
			id = newCorrelationID()
		}
		// One allocation for the request's state and its response writer.
		st := &requestState{reqInfo: reqInfo{id: id, base: rt.log, model: unknownModel}, statusWriter: statusWriter{ResponseWriter: w}}
		ri, sw := &st.reqInfo, &st.statusWriter
		st.idHeader[0] = id
		w.Header()[CorrelationHeader] = st.idHeader[:]
		start := time.Now()
		defer func() {
			// Deferred so an aborted response (http.ErrAbortHandler)
			// is counted too.
			status := sw.status
			if status == 0 {
				status = 499 // the client went away before any answer
			}
			path := pathLabel(r.URL.Path)
			rt.requestCounter(path, ri.model, status).Inc()
			if status >= 500 || status == http.StatusTooManyRequests {
				rt.errors.add(status, path)
			}
			rt.logAccess(r, ri, status, time.Since(start))
		}()
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), ctxKey{}, ri)))
	})
}

// logAccess writes the request's access line (level info; LLORCH_LOG_LEVEL=warn
// turns it off), carrying the correlation id like every line: through the
// buffered access log when the router has one, else through hclog.
func (rt *Router) logAccess(r *http.Request, ri *reqInfo, status int, took time.Duration) {
	if !rt.log.IsInfo() {
		return
	}
	ms := float64(took.Microseconds()) / 1000
	if al := rt.access; al != nil {
		al.Info("request", accesslog.Str("correlation_id", ri.id), accesslog.Str("method", r.Method), accesslog.Str("path", r.URL.Path),
			accesslog.Int64("status", int64(status)), accesslog.Str("model", ri.model), accesslog.Str("instance_id", ri.instance),
			accesslog.Str("node_id", ri.node), accesslog.Str("identity", ri.identity), accesslog.Float64("duration_ms", ms))
		return
	}
	ri.logger().Info("request", "method", r.Method, "path", r.URL.Path, "status", status, "model", ri.model,
		"instance_id", ri.instance, "node_id", ri.node, "identity", ri.identity, "duration_ms", ms)
}

// newCorrelationID is a random UUID (version 4) as text: one allocation,
// the string.
func newCorrelationID() string {
	var u [16]byte
	ids.next(&u)
	u[6] = (u[6] & 0x0f) | 0x40 // version 4
	u[8] = (u[8] & 0x3f) | 0x80 // RFC 9562 variant
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// ids buffers crypto/rand, so an id is not a getrandom(2) call.
var ids idSource

type idSource struct {
	mu   sync.Mutex
	buf  [4096]byte
	used int
}

func (s *idSource) next(u *[16]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used == 0 || s.used+len(u) > len(s.buf) {
		if _, err := rand.Read(s.buf[:]); err != nil {
			panic("router: no randomness for correlation ids: " + err.Error()) // crypto/rand never fails on Linux
		}
		s.used = 0
	}
	copy(u[:], s.buf[s.used:])
	clear(s.buf[s.used : s.used+len(u)])
	s.used += len(u)
}

// pathLabel keeps the path label's values to a known set.
func pathLabel(p string) string {
	switch p {
	case "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/healthz", "/metrics",
		pathMessages, pathMessagesCountTokens, pathResponses, pathResponsesInputToks:
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
