package router

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Error codes the router answers with. They sit in error.code of an
// OpenAI-shaped envelope, so OpenAI SDKs surface them unchanged.
const (
	CodeModelNotAvailable = "MODEL_NOT_AVAILABLE" // 404: no instance serves the model (on that path)
	CodePoolUnavailable   = "POOL_UNAVAILABLE"    // 503: the model's instances are all ejected or draining
	CodeReplicaExhausted  = "REPLICA_EXHAUSTED"   // 502: every instance tried failed before answering
	CodeWorkerReset       = "WORKER_RESET"        // SSE error event: the engine failed mid-answer
	CodeInvalidParams     = "INVALID_PARAMS"      // 400: the body is not what the endpoint takes
	CodeRequestTooLarge   = "REQUEST_TOO_LARGE"   // 413: body over max-body-bytes
	CodeMethodNotAllowed  = "METHOD_NOT_ALLOWED"  // 405
	CodeNotFound          = "NOT_FOUND"           // 404: no such endpoint
	CodeInternal          = "INTERNAL"            // 500
)

// APIError is the router's error body: OpenAI's {"error":{message,type,code}}
// plus whether a retry can succeed and when to try it.
type APIError struct {
	Message      string `json:"message"`
	Type         string `json:"type"`
	Code         string `json:"code"`
	Param        string `json:"param,omitempty"`
	Retriable    bool   `json:"retriable"`
	RetryAfterMs int64  `json:"retry_after_ms,omitempty"`
}

type envelope struct {
	Error APIError `json:"error"`
}

// errorType maps a status to OpenAI's error.type vocabulary.
func errorType(status int) string {
	switch {
	case status == http.StatusNotFound:
		return "not_found_error"
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status >= 500:
		return "server_error"
	default:
		return "invalid_request_error"
	}
}

// writeError writes the envelope; Retry-After accompanies retriable errors
// that name a delay.
func writeError(w http.ResponseWriter, status int, e APIError) {
	if e.Type == "" {
		e.Type = errorType(status)
	}
	b, _ := json.Marshal(envelope{e})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	if e.Retriable && e.RetryAfterMs > 0 {
		h.Set("Retry-After", strconv.FormatInt(max(1, (e.RetryAfterMs+999)/1000), 10))
	}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// sseError is the event that ends a stream the engine broke.
func sseError(code, msg string) []byte {
	b, _ := json.Marshal(envelope{APIError{Message: msg, Type: "server_error", Code: code, Retriable: true}})
	out := make([]byte, 0, len(b)+32)
	out = append(out, "event: error\ndata: "...)
	out = append(out, b...)
	return append(out, "\n\n"...)
}
