package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/internal/procfs"
)

// streamsSurviveNodeLoss is scenario 11: a model that streams for seconds
// on n1 and n3; concurrent greedy streams are cut off from the node that
// serves them (its link goes down: no reset, the packets just stop), and
// every stream must still end cleanly with exactly the text of an unbroken
// run. n3 stays cut off afterwards (the scenarios after this need only n1).
func streamsSurviveNodeLoss(t *testing.T, c *cluster, tasks map[string]*task) {
	const scenario = "11. node link down mid-stream → streams resumed"
	file := filepath.Join(c.dir, "stream.gguf")
	o := ggufgen.DefaultOptions()
	o.Embd, o.Layers, o.FF, o.Heads, o.KVHeads, o.StopAfter = 512, 8, 2048, 8, 8, 0
	if err := ggufgen.Write(file, o); err != nil {
		t.Fatal(err)
	}
	tasks["stream-n1"] = c.startTaskFile("n1", "stream", file, enginePort+2)
	tasks["stream-n3"] = c.startTaskFile("n3", "stream", file, enginePort+2)
	c.waitView(30*time.Second, "stream on n1 and n3", func(v nodeEngines) bool { return v.has("n1", "stream") && v.has("n3", "stream") })

	const n = 4
	body := func(i int) string {
		return fmt.Sprintf(`{"model":"stream","max_tokens":40,"temperature":0,"stream":true,"messages":[{"role":"user","content":"story %d"}]}`, i)
	}
	want := make([]string, n)
	for i := range want {
		text, errEv, err := c.stream(body(i), nil)
		if err != nil || errEv != "" || text == "" {
			t.Fatalf("reference stream %d: %q %v %s", i, text, err, errEv)
		}
		want[i] = text
	}

	// All n at once; when each has 5 chunks, cut the node doing most work.
	var ready sync.WaitGroup
	ready.Add(n)
	cut := make(chan struct{})
	got, errs := make([]string, n), make([]string, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			chunks := 0
			text, errEv, err := c.stream(body(i), func() {
				if chunks++; chunks == 5 {
					ready.Done()
					<-cut
				}
			})
			if chunks < 5 {
				ready.Done() // ended early: the comparison below reports it
			}
			got[i] = text
			if err != nil {
				errEv += " " + err.Error()
			}
			errs[i] = errEv
		}()
	}
	ready.Wait()
	victim := busierHost(tasks["stream-n1"], tasks["stream-n3"])
	if err := c.f.cut(victim); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	close(cut)
	wg.Wait()
	took := time.Since(t0)
	broken, differ := 0, 0
	for i := range got {
		if errs[i] != "" {
			broken++
			t.Logf("stream %d: %s", i, errs[i])
		} else if got[i] != want[i] {
			differ++
			t.Logf("stream %d differs:\n got %q\nwant %q", i, got[i], want[i])
		}
	}
	must(t, scenario, c.label(), broken == 0 && differ == 0, "%s cut under %d streams: %d broken, %d differ (goal 0, 0); all done %v after the cut",
		victim, n, broken, differ, took.Round(time.Millisecond))
}

// busierHost is the host whose stream engine used more CPU over 200 ms.
func busierHost(a, b *task) string {
	cpu := func(tk *task) uint64 {
		st, err := procfs.ReadStat(enginePID(tk))
		if err != nil {
			return 0
		}
		return st.UTime + st.STime
	}
	a0, b0 := cpu(a), cpu(b)
	time.Sleep(200 * time.Millisecond)
	if cpu(b)-b0 > cpu(a)-a0 {
		return b.host
	}
	return a.host
}

// stream sends a streaming chat through the router and returns the
// content, the error event's data if one came, and a transport error;
// each content chunk calls onChunk (which may block).
func (c *cluster) stream(body string, onChunk func()) (text, errEvent string, err error) {
	r, _ := http.NewRequest("POST", c.routerURL()+"/v1/chat/completions", strings.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+c.apiToken)
	r.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(r)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return "", "", fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	var sb strings.Builder
	done := false
	br := bufio.NewReader(resp.Body)
	for {
		line, rerr := br.ReadBytes('\n')
		if d, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("data: ")); ok {
			if bytes.Equal(d, []byte("[DONE]")) {
				done = true
			} else {
				var ch struct {
					Choices []struct {
						Delta struct {
							Content string `json:"content"`
						} `json:"delta"`
					} `json:"choices"`
					Error json.RawMessage `json:"error"`
				}
				if json.Unmarshal(d, &ch) != nil || len(ch.Error) > 0 {
					errEvent = string(d)
				}
				for _, x := range ch.Choices {
					if x.Delta.Content != "" {
						sb.WriteString(x.Delta.Content)
						if onChunk != nil {
							onChunk()
						}
					}
				}
			}
		}
		if rerr != nil {
			break
		}
	}
	if !done && errEvent == "" {
		errEvent = "stream ended without [DONE]"
	}
	return sb.String(), errEvent, nil
}
