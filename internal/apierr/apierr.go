// Package apierr is the one shape of every HTTP error llorch writes: the
// OpenAI envelope {"error":{"message","type","code","param"}} plus our
// "retriable" and "retry_after_ms", so OpenAI SDKs read every error the
// router, the admission queues and the auth gate answer with, and a
// client can tell a retry worth making from one that is not.
package apierr

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Error is one error answer. Status is the HTTP status; Type, when empty,
// follows from it (see TypeFor); Code is llorch's stable machine-readable
// code (e.g. MODEL_NOT_AVAILABLE); Param names the offending field or
// header, if any. Retriable says a later retry can succeed, and
// RetryAfter, when set on a retriable error, when to make it.
type Error struct {
	Status     int
	Message    string
	Type       string
	Code       string
	Param      string
	Retriable  bool
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Code == "" {
		return e.Message
	}
	return e.Code + ": " + e.Message
}

// New makes an error with a formatted message (pass text that is not a
// format as New(status, code, "%s", text)).
func New(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// TypeFor maps a status to OpenAI's error.type vocabulary.
func TypeFor(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusForbidden:
		return "permission_error"
	case status == http.StatusNotFound:
		return "not_found_error"
	case status == http.StatusConflict:
		return "conflict_error"
	case status == http.StatusUnprocessableEntity:
		return "unprocessable_entity_error"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status >= 500:
		return "server_error"
	default:
		return "invalid_request_error"
	}
}

// body is the wire form. param is null when empty, as OpenAI sends it.
type body struct {
	Message      string  `json:"message"`
	Type         string  `json:"type"`
	Code         string  `json:"code"`
	Param        *string `json:"param"`
	Retriable    bool    `json:"retriable"`
	RetryAfterMs int64   `json:"retry_after_ms,omitempty"`
}

// status is e.Status, or 500 when unset.
func (e *Error) status() int {
	if e.Status < 100 || e.Status > 999 {
		return http.StatusInternalServerError
	}
	return e.Status
}

// retryAfter is the delay a retriable error names (0: none).
func (e *Error) retryAfter() time.Duration {
	if !e.Retriable || e.RetryAfter <= 0 {
		return 0
	}
	return e.RetryAfter
}

// Marshal is the envelope's JSON.
func (e *Error) Marshal() []byte {
	b := body{Message: e.Message, Type: e.Type, Code: e.Code, Retriable: e.Retriable}
	if b.Type == "" {
		b.Type = TypeFor(e.status())
	}
	if e.Param != "" {
		p := e.Param
		b.Param = &p
	}
	if d := e.retryAfter(); d > 0 {
		b.RetryAfterMs = max(1, d.Milliseconds())
	}
	out, _ := json.Marshal(struct {
		Error body `json:"error"`
	}{b})
	return out
}

// RetryAfterSeconds is the Retry-After header value for a delay: whole
// seconds, rounded up, at least 1 (the header cannot say less).
func RetryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64((d+time.Second-1)/time.Second)), 10)
}

// Write answers with e: the envelope, its status, and Retry-After for a
// retriable error that names a delay. Headers set before the call (Allow,
// WWW-Authenticate) are kept.
func Write(w http.ResponseWriter, e *Error) { e.write(w, e.Marshal()) }

// write sends body (an envelope of e) with e's status and Retry-After.
func (e *Error) write(w http.ResponseWriter, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Del("Content-Encoding")
	if d := e.retryAfter(); d > 0 {
		h.Set("Retry-After", RetryAfterSeconds(d))
	}
	w.WriteHeader(e.status())
	_, _ = w.Write(b)
}

// SSE is the event that ends a stream with e: `event: error` carrying the
// envelope, so a client reading a stream sees the same body it would have
// got as a response.
func SSE(e *Error) []byte { return errorEvent(e.Marshal()) }

// errorEvent frames an envelope as the SSE error event.
func errorEvent(b []byte) []byte {
	out := make([]byte, 0, len(b)+24)
	out = append(out, "event: error\ndata: "...)
	out = append(out, b...)
	return append(out, "\n\n"...)
}
