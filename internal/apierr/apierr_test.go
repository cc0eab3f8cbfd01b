package apierr

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
)

// sdkParse reads a body the way openai-go does: the "error" member into
// its Error type.
func sdkParse(t *testing.T, raw []byte) openai.Error {
	t.Helper()
	var env struct {
		Error json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatalf("body %s: %v", raw, err)
	}
	var e openai.Error
	if err := e.UnmarshalJSON(env.Error); err != nil {
		t.Fatalf("openai-go cannot read %s: %v", raw, err)
	}
	return e
}

func TestWriteEnvelope(t *testing.T) {
	cases := []struct {
		e          *Error
		wantType   string
		retryAfter string
	}{
		{&Error{Status: 401, Code: "MISSING_TOKEN", Message: "missing bearer token"}, "authentication_error", ""},
		{&Error{Status: 403, Code: "FORBIDDEN", Message: "no"}, "permission_error", ""},
		{&Error{Status: 404, Code: "NOT_FOUND", Message: "x"}, "not_found_error", ""},
		{&Error{Status: 429, Code: "ADMISSION_REJECT", Message: "full", Retriable: true, RetryAfter: 1500 * time.Millisecond}, "rate_limit_error", "2"},
		{&Error{Status: 503, Code: "NOT_SYNCED", Message: "x", Retriable: true, RetryAfter: 10 * time.Millisecond}, "server_error", "1"},
		{&Error{Status: 503, Code: "X", Message: "not retriable: no header", RetryAfter: time.Second}, "server_error", ""},
		{&Error{Status: 400, Code: "INVALID_PARAMS", Param: "model", Message: "x", Type: "custom_error"}, "custom_error", ""},
	}
	for _, c := range cases {
		w := httptest.NewRecorder()
		w.Header().Set("WWW-Authenticate", `Bearer realm="llorch"`)
		Write(w, c.e)
		if w.Code != c.e.Status {
			t.Errorf("%s: status %d", c.e.Code, w.Code)
		}
		if got := w.Header().Get("Retry-After"); got != c.retryAfter {
			t.Errorf("%s: Retry-After %q, want %q", c.e.Code, got, c.retryAfter)
		}
		if w.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("%s: a header set before Write was dropped", c.e.Code)
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: content type %q", c.e.Code, ct)
		}
		se := sdkParse(t, w.Body.Bytes())
		if se.Code != c.e.Code || se.Message != c.e.Message || se.Type != c.wantType || se.Param != c.e.Param {
			t.Errorf("%s: SDK read %+v from %s", c.e.Code, se, w.Body.String())
		}
		if !se.JSON.Param.Valid() && c.e.Param != "" {
			t.Errorf("%s: param missing", c.e.Code)
		}
		var ours struct {
			Error struct {
				Retriable    bool  `json:"retriable"`
				RetryAfterMs int64 `json:"retry_after_ms"`
			} `json:"error"`
		}
		_ = json.Unmarshal(w.Body.Bytes(), &ours)
		if ours.Error.Retriable != c.e.Retriable {
			t.Errorf("%s: retriable %v", c.e.Code, ours.Error.Retriable)
		}
		if want := c.e.retryAfter().Milliseconds(); ours.Error.RetryAfterMs != want {
			t.Errorf("%s: retry_after_ms %d, want %d", c.e.Code, ours.Error.RetryAfterMs, want)
		}
	}
}

func TestNewAndError(t *testing.T) {
	e := New(404, "MODEL_NOT_AVAILABLE", "no instance serves model %q", "m")
	if e.Status != 404 || e.Message != `no instance serves model "m"` || e.Error() != `MODEL_NOT_AVAILABLE: no instance serves model "m"` {
		t.Fatalf("%+v %q", e, e.Error())
	}
}

func TestSSEFrame(t *testing.T) {
	b := SSE(&Error{Status: 502, Code: "WORKER_RESET", Message: "broke", Retriable: true})
	if !bytes.HasPrefix(b, []byte("event: error\ndata: {")) || !bytes.HasSuffix(b, []byte("}\n\n")) {
		t.Fatalf("frame %q", b)
	}
	data := bytes.TrimSuffix(bytes.TrimPrefix(b, []byte("event: error\ndata: ")), []byte("\n\n"))
	if se := sdkParse(t, data); se.Code != "WORKER_RESET" || se.Type != "server_error" {
		t.Fatalf("%+v", se)
	}
}

func TestUnsetStatusIs500(t *testing.T) {
	w := httptest.NewRecorder()
	Write(w, &Error{Code: "INTERNAL", Message: "x"})
	if w.Code != http.StatusInternalServerError {
		t.Fatal(w.Code)
	}
}
