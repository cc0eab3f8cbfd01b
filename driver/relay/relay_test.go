package relay

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRelayDemandsTokenAndStreams(t *testing.T) {
	const token = "relay-test-token-0123456789abcdef"
	sawAuth := make(chan string, 4)
	clientGotFirst := make(chan struct{})
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawAuth <- r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json") // not an event stream: the relay must flush anyway
		fl := w.(http.Flusher)
		io.WriteString(w, "data: first\n\n")
		fl.Flush()
		// The second chunk comes only after the client saw the first: a
		// relay that buffers would hold the first until the timeout.
		select {
		case <-clientGotFirst:
		case <-time.After(10 * time.Second):
		}
		io.WriteString(w, "data: second\n\n")
	}))
	defer engine.Close()
	tf := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tf, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := Start("127.0.0.1:0", strings.TrimPrefix(engine.URL, "http://"), tf, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	base := "http://" + r.Addr

	for _, hdr := range []string{"", "Bearer wrong-token", "Basic abc"} {
		req, _ := http.NewRequest("GET", base+"/api/tags", nil)
		if hdr != "" {
			req.Header.Set("Authorization", hdr)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: status %d, want 401", hdr, resp.StatusCode)
		}
	}
	select {
	case a := <-sawAuth:
		t.Fatalf("an unauthenticated request reached the engine (Authorization %q)", a)
	default:
	}

	req, _ := http.NewRequest("POST", base+"/v1/chat/completions", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+token)
	start := time.Now()
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("with the token: status %d", resp.StatusCode)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	close(clientGotFirst)
	if waited := time.Since(start); waited >= 10*time.Second {
		t.Errorf("the first chunk arrived after %s, only with the second: the relay buffers", waited)
	}
	if a := <-sawAuth; a != "" {
		t.Errorf("the engine saw Authorization %q; the relay must strip the token", a)
	}
}
