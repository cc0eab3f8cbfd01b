package router

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// SSE events and JSON bodies far larger than the router's 4 KiB buffers
// pass through whole.
func TestLargeEventsAndBodiesPassWhole(t *testing.T) {
	big := strings.Repeat("x", 20000)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if strings.Contains(string(b), `"stream":true`) {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{\"content\":%q}}]}\n\n", big)
			fmt.Fprint(w, "data: [DONE]\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"choices":[{"message":{"content":%q}}]}`, big)
	}))
	defer up.Close()
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, up.URL))
	for _, stream := range []bool{false, true} {
		st, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, stream))
		if st != 200 || !strings.Contains(body, big) || (stream && !strings.Contains(body, "[DONE]")) {
			t.Errorf("stream=%v: status %d, %d bytes", stream, st, len(body))
		}
	}
}
