package openaifixture

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func post(t *testing.T, url, body, auth string) (*http.Response, string, error) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("X-Correlation-Id", "cid")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

func TestFixtureBehaviours(t *testing.T) {
	fx, hs := Start(t, "m")
	chat := `{"model":"m","stream":true,"messages":[]}`

	resp, body, err := post(t, hs.URL+"/v1/chat/completions", chat, "Bearer x")
	if err != nil || resp.StatusCode != 200 || strings.Count(body, "data: ") != 10 || !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("stream: %v %s", err, body)
	}
	if s := fx.Seen(); len(s) != 1 || s[0].Authorization != "Bearer x" || s[0].CorrelationID != "cid" || s[0].Model != "m" {
		t.Fatalf("seen %+v", s)
	}

	fx.SetBehavior(Behavior{Fault: FaultStatus, Status: 429, FaultTimes: 1})
	if resp, _, _ := post(t, hs.URL+"/v1/completions", `{"model":"m","prompt":"x"}`, ""); resp.StatusCode != 429 {
		t.Fatalf("status fault: %d", resp.StatusCode)
	}
	if resp, _, _ := post(t, hs.URL+"/v1/completions", `{"model":"m","prompt":"x"}`, ""); resp.StatusCode != 200 {
		t.Fatalf("fault limited to one request: %d", resp.StatusCode)
	}

	fx.SetBehavior(Behavior{Fault: FaultCloseBeforeFirstByte})
	if _, _, err := post(t, hs.URL+"/v1/chat/completions", chat, ""); err == nil {
		t.Fatal("close before first byte: want a client error")
	}

	fx.SetBehavior(Behavior{Tokens: 5, Fault: FaultDieMidStream, DieAfter: 2})
	_, body, err = post(t, hs.URL+"/v1/chat/completions", chat, "")
	if err == nil || strings.Count(body, "data: ") != 2 {
		t.Fatalf("die mid-stream: err %v, body %q", err, body)
	}

	fx.SetBehavior(Behavior{RequireToken: "t"})
	if resp, _, _ := post(t, hs.URL+"/v1/embeddings", `{"model":"m","input":"x"}`, "Bearer nope"); resp.StatusCode != 401 {
		t.Fatalf("require token: %d", resp.StatusCode)
	}
	if fx.Requests() != 6 {
		t.Fatalf("requests %d, want 6", fx.Requests())
	}
}
