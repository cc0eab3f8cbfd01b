package apierr

import (
	"encoding/json"
	"net/http"
	"time"
)

// AnthropicTypeFor maps a status to the Anthropic Messages API's
// error.type vocabulary (what its SDKs switch on).
func AnthropicTypeFor(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusForbidden:
		return "permission_error"
	case status == http.StatusNotFound:
		return "not_found_error"
	case status == http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status == http.StatusServiceUnavailable || status == 529:
		return "overloaded_error"
	case status == http.StatusGatewayTimeout:
		return "timeout_error"
	case status >= 500:
		return "api_error"
	default:
		return "invalid_request_error"
	}
}

// anthropicBody is the inner object of Anthropic's error envelope. Code,
// param, retriable and retry_after_ms are llorch's additions (clients
// that do not know them ignore them).
type anthropicBody struct {
	Type         string `json:"type"`
	Message      string `json:"message"`
	Code         string `json:"code,omitempty"`
	Param        string `json:"param,omitempty"`
	Retriable    bool   `json:"retriable"`
	RetryAfterMs int64  `json:"retry_after_ms,omitempty"`
}

// MarshalAnthropic is e in Anthropic's envelope:
// {"type":"error","error":{"type","message"}} (plus llorch's code).
// The type always follows the status: OpenAI's vocabulary (e.Type) is not
// Anthropic's.
func (e *Error) MarshalAnthropic() []byte {
	b := anthropicBody{Type: AnthropicTypeFor(e.status()), Message: e.Message, Code: e.Code, Param: e.Param, Retriable: e.Retriable}
	if d := e.retryAfter(); d > 0 {
		b.RetryAfterMs = max(1, d.Milliseconds())
	}
	out, _ := json.Marshal(struct {
		Type  string        `json:"type"`
		Error anthropicBody `json:"error"`
	}{"error", b})
	return out
}

// WriteAnthropic is Write with Anthropic's envelope, for /v1/messages.
func WriteAnthropic(w http.ResponseWriter, e *Error) { e.write(w, e.MarshalAnthropic()) }

// AnthropicSSE is the event that ends an Anthropic stream with e
// (`event: error`, the envelope as data), as Anthropic's API sends it.
func AnthropicSSE(e *Error) []byte { return errorEvent(e.MarshalAnthropic()) }

// Parse reads an error body written in any shape llorch or an engine
// answers with, so a gateway can re-envelope it for another API: OpenAI's
// {"error":{"message","type","code","param",...}}, a bare
// {"code","message"} (llorch's auth gate), or Anthropic's own envelope.
// ok is false when the body is none of them.
func Parse(status int, body []byte) (e *Error, ok bool) {
	var v struct {
		Type  string          `json:"type"`
		Error json.RawMessage `json:"error"`
		// bare form
		Code    json.RawMessage `json:"code"`
		Message string          `json:"message"`
	}
	if json.Unmarshal(body, &v) != nil {
		return nil, false
	}
	e = &Error{Status: status}
	if len(v.Error) > 0 {
		var in struct {
			Message      string          `json:"message"`
			Type         string          `json:"type"`
			Code         json.RawMessage `json:"code"`
			Param        *string         `json:"param"`
			Retriable    bool            `json:"retriable"`
			RetryAfterMs int64           `json:"retry_after_ms"`
		}
		if err := json.Unmarshal(v.Error, &in); err != nil {
			// {"error":"text"}, as some engines send it.
			var s string
			if json.Unmarshal(v.Error, &s) != nil {
				return nil, false
			}
			e.Message = s
			return e, true
		}
		e.Message, e.Code, e.Retriable = in.Message, codeString(in.Code), in.Retriable
		if in.Param != nil {
			e.Param = *in.Param
		}
		if in.RetryAfterMs > 0 {
			e.RetryAfter = msDuration(in.RetryAfterMs)
		}
		return e, e.Message != "" || e.Code != ""
	}
	if v.Message == "" {
		return nil, false
	}
	e.Message, e.Code = v.Message, codeString(v.Code)
	return e, true
}

// codeString accepts a code as a JSON string or number (engines send both).
func codeString(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

func msDuration(ms int64) time.Duration { return time.Duration(ms) * time.Millisecond }
