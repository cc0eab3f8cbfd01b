package router

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// taskFields are the JSON keys of TaskRequest, written out here (not
// reflected) so the oracle does not share the decoder's view.
var taskFields = []string{"task_id", "session_id", "model_ref", "model", "prompt", "messages", "max_tokens",
	"priority", "deadline_ms", "temperature", "seed", "workload", "ctx", "engine", "placement"}

func knownTaskField(k string) bool {
	for _, f := range taskFields {
		if strings.EqualFold(f, k) { // encoding/json matches names case-insensitively
			return true
		}
	}
	return false
}

// POST /v2/tasks on a router with no engines: any body gets an answer in
// the API's error envelope, never a 5xx; a body that is not one JSON object
// or names an unknown field is a 400 invalid_params; a plainly valid task
// is refused only because no node serves its model (404).
func FuzzV2TaskBody(f *testing.F) {
	for _, s := range []string{
		`{"model_ref":"m","prompt":"hi","max_tokens":8}`, `{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1}`,
		`{"model_ref":"m","prompt":"hi","max_tokens":0}`, `{"model_ref":"m","max_tokens":8}`, `{"nope":1}`, `[]`, `null`, ``,
		`{"model_ref":"m","prompt":"hi","max_tokens":8} trailing`, `{"model_ref":"m","prompt":"hi","max_tokens":8,"priority":"urgent"}`,
		`{"model_ref":"m","prompt":"hi","max_tokens":8,"deadline_ms":-5}`, `{"model_ref":1}`, `{"placement":{"mode":"pin","pin_node_id":"n9"}}`,
		`{"MODEL_REF":"m","prompt":"hi","max_tokens":8}`, `{"model_ref":"m","prompt":"hi","max_tokens":1e3}`,
	} {
		f.Add(s)
	}
	h := newHarness(f, nil)
	handler := h.rt.Handler()
	f.Fuzz(func(t *testing.T, body string) {
		r := httptest.NewRequest(http.MethodPost, "/v2/tasks", strings.NewReader(body))
		r.Header.Set("Authorization", "Bearer "+clientToken)
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, r)
		var env struct {
			Error *struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if w.Code >= 500 {
			t.Fatalf("body %q: status %d: %s", body, w.Code, w.Body)
		}
		if err := json.Unmarshal(w.Body.Bytes(), &env); err != nil || env.Error == nil || env.Error.Code == "" || env.Error.Message == "" {
			t.Fatalf("body %q: status %d, answer not in the error envelope: %s", body, w.Code, w.Body)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(body), &obj); err != nil || obj == nil {
			if w.Code != http.StatusBadRequest || env.Error.Code != CodeInvalidParams {
				t.Fatalf("body %q is not one JSON object, got %d %s", body, w.Code, w.Body)
			}
			return
		}
		for k := range obj {
			if !knownTaskField(k) {
				if w.Code != http.StatusBadRequest || env.Error.Code != CodeInvalidParams {
					t.Fatalf("body %q has unknown field %q, got %d %s", body, k, w.Code, w.Body)
				}
				return
			}
		}
		// Plainly valid: exactly model_ref (non-empty string), prompt
		// (string) and max_tokens (an integer in range).
		var plain struct {
			ModelRef  string  `json:"model_ref"`
			Prompt    *string `json:"prompt"`
			MaxTokens float64 `json:"max_tokens"`
		}
		_, hasRef := obj["model_ref"]
		_, hasMax := obj["max_tokens"]
		if len(obj) == 3 && hasRef && hasMax && json.Unmarshal([]byte(body), &plain) == nil &&
			plain.ModelRef != "" && plain.Prompt != nil && plain.MaxTokens >= 1 && plain.MaxTokens <= 32768 &&
			plain.MaxTokens == float64(int64(plain.MaxTokens)) && !strings.ContainsAny(string(obj["max_tokens"]), ".eE") {
			if w.Code != http.StatusNotFound || env.Error.Code != CodeModelNotAvailable {
				t.Fatalf("valid body %q: got %d %s, want 404 %s", body, w.Code, w.Body, CodeModelNotAvailable)
			}
		}
	})
}
