// Package openaifixture is a fast, scriptable OpenAI-compatible upstream for
// the router's tests and benchmarks. It serves /v1/chat/completions (SSE and
// not), /v1/completions, /v1/embeddings and /v1/models, can fail on purpose
// (close before the first byte, answer a status, die mid-stream) and records
// the headers it saw, so tests can assert what reached the engine.
package openaifixture

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fault is a failure the fixture injects.
type Fault int

const (
	// FaultNone serves normally.
	FaultNone Fault = iota
	// FaultCloseBeforeFirstByte hijacks the connection and closes it
	// without writing anything, as a crashed engine would.
	FaultCloseBeforeFirstByte
	// FaultStatus answers Behavior.Status with an OpenAI error body.
	FaultStatus
	// FaultDieMidStream aborts the connection after Behavior.DieAfter
	// tokens of a streamed answer (non-streamed answers: after half the
	// body).
	FaultDieMidStream
)

// Behavior scripts the fixture. The zero value serves 8 tokens at full speed.
type Behavior struct {
	Tokens         int           // tokens per completion; 0 = 8
	TokenDelay     time.Duration // pause before each token
	FirstByteDelay time.Duration // pause before the response headers
	Fault          Fault
	Status         int // for FaultStatus
	DieAfter       int // for FaultDieMidStream
	// FaultTimes limits the fault to the next n requests; 0 = every request.
	FaultTimes int
	// FaultMatch, when set, limits the fault to requests whose body
	// contains it (a "poison prompt").
	FaultMatch string
	// RetryAfter, when set, is sent as Retry-After with FaultStatus.
	RetryAfter string
	// RequireToken, when set, answers 401 to requests without
	// "Authorization: Bearer <RequireToken>".
	RequireToken string
	// EmbeddingDims is the length of each embedding vector; 0 = 8.
	EmbeddingDims int
}

// Seen is what one request carried.
type Seen struct {
	Path          string
	Model         string
	Authorization string
	CorrelationID string
	Traceparent   string
	// IncludeUsage: the request asked for a streamed usage chunk
	// (stream_options.include_usage).
	IncludeUsage bool
}

const maxSeen = 4096

// Server is the fixture. Create it with New; it is an http.Handler.
type Server struct {
	Model string // the model /v1/models lists

	mu       sync.Mutex
	b        Behavior
	faultsN  int
	seen     []Seen
	requests atomic.Int64
	finished atomic.Int64
	canceled atomic.Int64
	inFlight atomic.Int64
}

// New returns a fixture serving model.
func New(model string) *Server { return &Server{Model: model} }

// Start serves a new fixture on a loopback httptest server closed when the
// test ends; it returns the fixture and its base URL.
func Start(t testing.TB, model string) (*Server, *httptest.Server) {
	t.Helper()
	s := New(model)
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	return s, hs
}

// SetBehavior replaces the script; it applies to requests that start after.
func (s *Server) SetBehavior(b Behavior) {
	s.mu.Lock()
	s.b, s.faultsN = b, 0
	s.mu.Unlock()
}

// Requests counts requests received (any path).
func (s *Server) Requests() int64 { return s.requests.Load() }

// Finished counts answers written to the end.
func (s *Server) Finished() int64 { return s.finished.Load() }

// Canceled counts requests whose client went away before the answer ended.
func (s *Server) Canceled() int64 { return s.canceled.Load() }

// InFlight is the number of requests being served now.
func (s *Server) InFlight() int64 { return s.inFlight.Load() }

// Seen returns the requests recorded so far (the last 4096).
func (s *Server) Seen() []Seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Seen(nil), s.seen...)
}

// Reset clears counters and recorded requests (not the behaviour).
func (s *Server) Reset() {
	s.mu.Lock()
	s.seen, s.faultsN = nil, 0
	s.mu.Unlock()
	s.requests.Store(0)
	s.finished.Store(0)
	s.canceled.Store(0)
}

// behaviorFor returns the script for one request, consuming a fault when
// the fault is limited to a number of requests.
func (s *Server) behaviorFor(seen Seen, body []byte) Behavior {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.seen) >= maxSeen {
		s.seen = s.seen[1:]
	}
	s.seen = append(s.seen, seen)
	b := s.b
	if b.FaultMatch != "" && !strings.Contains(string(body), b.FaultMatch) {
		b.Fault = FaultNone
	}
	if b.Fault != FaultNone && b.FaultTimes > 0 {
		if s.faultsN >= b.FaultTimes {
			b.Fault = FaultNone
		} else {
			s.faultsN++
		}
	}
	if b.Tokens <= 0 {
		b.Tokens = 8
	}
	if b.EmbeddingDims <= 0 {
		b.EmbeddingDims = 8
	}
	return b
}

type request struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	var req request
	var body []byte
	if r.Method == http.MethodPost {
		var err error
		body, err = io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			return
		}
		if err := json.Unmarshal(body, &req); err != nil {
			writeError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error(), "invalid_request_error")
			return
		}
	}
	b := s.behaviorFor(Seen{
		Path: r.URL.Path, Model: req.Model,
		Authorization: r.Header.Get("Authorization"),
		CorrelationID: r.Header.Get("X-Correlation-Id"),
		Traceparent:   r.Header.Get("Traceparent"),
		IncludeUsage:  req.StreamOptions.IncludeUsage,
	}, body)
	if b.RequireToken != "" && r.Header.Get("Authorization") != "Bearer "+b.RequireToken {
		writeError(w, http.StatusUnauthorized, "invalid api key", "authentication_error")
		return
	}
	if b.FirstByteDelay > 0 && !pause(r, b.FirstByteDelay) {
		s.canceled.Add(1)
		return
	}
	switch b.Fault {
	case FaultCloseBeforeFirstByte:
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	case FaultStatus:
		if b.RetryAfter != "" {
			w.Header().Set("Retry-After", b.RetryAfter)
		}
		writeError(w, b.Status, "injected failure "+strconv.Itoa(b.Status), "server_error")
		return
	}
	if req.Model == "" && r.Method == http.MethodPost {
		req.Model = s.Model
	}
	switch r.URL.Path {
	case "/v1/models":
		s.models(w)
	case "/v1/embeddings":
		s.embeddings(w, req.Model, b)
	case "/v1/chat/completions", "/v1/completions":
		chat := r.URL.Path == "/v1/chat/completions"
		if req.Stream {
			s.stream(w, r, req.Model, chat, b, req.StreamOptions.IncludeUsage)
		} else {
			s.complete(w, r, req.Model, chat, b)
		}
	default:
		writeError(w, http.StatusNotFound, "no such path "+r.URL.Path, "invalid_request_error")
	}
}

// Token returns the i-th token the fixture generates; tests rebuild the
// expected text from it.
func Token(i int) string { return "tok" + strconv.Itoa(i) + " " }

// Text is the whole text of an n-token answer.
func Text(n int) string {
	var out []byte
	for i := range n {
		out = append(out, Token(i)...)
	}
	return string(out)
}

func pause(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.Context().Done():
		return false
	case <-t.C:
		return true
	}
}

func (s *Server) stream(w http.ResponseWriter, r *http.Request, model string, chat bool, b Behavior, usage bool) {
	fl, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if fl != nil {
		fl.Flush()
	}
	qm := quote(model)
	created := strconv.FormatInt(time.Now().Unix(), 10)
	buf := make([]byte, 0, 512)
	for i := 0; i < b.Tokens; i++ {
		if b.Fault == FaultDieMidStream && i >= b.DieAfter {
			panic(http.ErrAbortHandler)
		}
		if b.TokenDelay > 0 && !pause(r, b.TokenDelay) {
			s.canceled.Add(1)
			return
		}
		buf = appendChunk(buf[:0], chat, qm, created, quote(Token(i)), "null", i == 0)
		if _, err := w.Write(buf); err != nil {
			s.canceled.Add(1)
			return
		}
		if fl != nil {
			fl.Flush()
		}
	}
	if b.Fault == FaultDieMidStream {
		panic(http.ErrAbortHandler)
	}
	buf = appendChunk(buf[:0], chat, qm, created, `""`, `"stop"`, false)
	if usage {
		// OpenAI's usage chunk: no choices, the totals (as complete() reports them).
		buf = append(buf, `data: {"id":"fx-1","created":`+created+`,"model":`+qm+`,"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":`+strconv.Itoa(b.Tokens)+`,"total_tokens":`+strconv.Itoa(1+b.Tokens)+`}}`+"\n\n"...)
	}
	buf = append(buf, "data: [DONE]\n\n"...)
	if _, err := w.Write(buf); err != nil {
		s.canceled.Add(1)
		return
	}
	if r.Context().Err() != nil {
		s.canceled.Add(1)
		return
	}
	s.finished.Add(1)
}

func appendChunk(buf []byte, chat bool, qmodel, created, qtext, finish string, first bool) []byte {
	buf = append(buf, `data: {"id":"fx-1","created":`...)
	buf = append(buf, created...)
	buf = append(buf, `,"model":`...)
	buf = append(buf, qmodel...)
	if chat {
		buf = append(buf, `,"object":"chat.completion.chunk","choices":[{"index":0,"delta":{`...)
		if first {
			buf = append(buf, `"role":"assistant",`...)
		}
		buf = append(buf, `"content":`...)
		buf = append(buf, qtext...)
		buf = append(buf, `},"finish_reason":`...)
	} else {
		buf = append(buf, `,"object":"text_completion","choices":[{"index":0,"text":`...)
		buf = append(buf, qtext...)
		buf = append(buf, `,"finish_reason":`...)
	}
	buf = append(buf, finish...)
	buf = append(buf, "}]}\n\n"...)
	return buf
}

func (s *Server) complete(w http.ResponseWriter, r *http.Request, model string, chat bool, b Behavior) {
	if b.TokenDelay > 0 && !pause(r, time.Duration(b.Tokens)*b.TokenDelay) {
		s.canceled.Add(1)
		return
	}
	text := Text(b.Tokens)
	usage := map[string]int{"prompt_tokens": 1, "completion_tokens": b.Tokens, "total_tokens": 1 + b.Tokens}
	var resp map[string]any
	if chat {
		resp = map[string]any{
			"id": "fx-1", "object": "chat.completion", "created": time.Now().Unix(), "model": model,
			"choices": []any{map[string]any{"index": 0, "finish_reason": "stop",
				"message": map[string]any{"role": "assistant", "content": text}}},
			"usage": usage,
		}
	} else {
		resp = map[string]any{
			"id": "fx-1", "object": "text_completion", "created": time.Now().Unix(), "model": model,
			"choices": []any{map[string]any{"index": 0, "finish_reason": "stop", "text": text}},
			"usage":   usage,
		}
	}
	if b.Fault == FaultDieMidStream {
		// Promise the whole body, send half, then drop the connection.
		body, _ := json.Marshal(resp)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body[:len(body)/2])
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
		panic(http.ErrAbortHandler)
	}
	writeJSON(w, http.StatusOK, resp)
	s.finished.Add(1)
}

func (s *Server) embeddings(w http.ResponseWriter, model string, b Behavior) {
	vec := make([]float64, b.EmbeddingDims)
	for i := range vec {
		vec[i] = float64(i) / float64(len(vec))
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list", "model": model,
		"data":  []any{map[string]any{"object": "embedding", "index": 0, "embedding": vec}},
		"usage": map[string]int{"prompt_tokens": 1, "total_tokens": 1},
	})
	s.finished.Add(1)
}

func (s *Server) models(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list",
		"data":   []any{map[string]any{"id": s.Model, "object": "model", "created": 0, "owned_by": "openaifixture"}},
	})
	s.finished.Add(1)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeError(w http.ResponseWriter, status int, msg, typ string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{"message": msg, "type": typ, "code": nil}})
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
