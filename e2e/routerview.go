// The router as users see it: requests, /v2/nodes, and waiting for the
// view to change.

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

func (c *cluster) req(method, path string, body []byte) (int, []byte, error) {
	r, _ := http.NewRequest(method, c.routerURL()+path, bytes.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+c.apiToken)
	r.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(r)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (c *cluster) chat(model string) (int, error) {
	st, _, err := c.req("POST", "/v1/chat/completions", []byte(`{"model":"`+model+`","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`))
	return st, err
}

type nodeEngines map[string][]string

// view is the router's /v2/nodes: healthy engines per node.
func (c *cluster) view() nodeEngines {
	st, b, err := c.req("GET", "/v2/nodes", nil)
	if err != nil || st != 200 {
		return nil
	}
	var v struct {
		Nodes []struct {
			NodeID  string `json:"node_id"`
			Engines []struct {
				ID     string `json:"id"`
				Model  string `json:"model"`
				Health string `json:"health"`
			} `json:"engines"`
		} `json:"nodes"`
	}
	if json.Unmarshal(b, &v) != nil {
		return nil
	}
	out := nodeEngines{}
	for _, n := range v.Nodes {
		for _, e := range n.Engines {
			if e.Health == "passing" {
				out[n.NodeID] = append(out[n.NodeID], e.Model)
			}
		}
	}
	return out
}

func (v nodeEngines) count(model string) int {
	n := 0
	for _, ms := range v {
		for _, m := range ms {
			if m == model {
				n++
			}
		}
	}
	return n
}

func (v nodeEngines) has(node, model string) bool {
	for _, m := range v[node] {
		if m == model {
			return true
		}
	}
	return false
}

// waitView polls the router's view until cond holds; it returns how long.
func (c *cluster) waitView(limit time.Duration, what string, cond func(nodeEngines) bool) time.Duration {
	start := time.Now()
	for time.Since(start) < limit {
		if v := c.view(); v != nil && cond(v) {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("timed out after %v waiting for %s (view %v)", limit, what, c.view())
	return 0
}

// taskNode submits a /v2 task (pinned to pin unless empty) and returns the
// node its started event names.
func (c *cluster) taskNode(model, pin string) (string, error) {
	return c.sessionTaskNode(model, pin, "")
}

// sessionTaskNode is taskNode for a task of session (none if empty).
func (c *cluster) sessionTaskNode(model, pin, session string) (string, error) {
	extra := ""
	if pin != "" {
		extra = `,"placement":{"mode":"pin","pin_node_id":"` + pin + `"}`
	}
	if session != "" {
		extra += `,"session_id":"` + session + `"`
	}
	st, b, err := c.req("POST", "/v2/tasks", []byte(`{"model_ref":"`+model+`","prompt":"hello","max_tokens":32`+extra+`}`))
	if err != nil || st != 202 {
		return "", fmt.Errorf("submit: %d %s %v", st, b, err)
	}
	var s struct {
		TaskID string `json:"task_id"`
	}
	json.Unmarshal(b, &s)
	st, b, err = c.req("GET", "/v2/tasks/"+s.TaskID+"/events", nil)
	if err != nil || st != 200 {
		return "", fmt.Errorf("events: %d %v", st, err)
	}
	for _, block := range strings.Split(string(b), "\n\n") {
		if strings.HasPrefix(block, "event: started\ndata: ") {
			var ev struct {
				NodeID string `json:"node_id"`
			}
			json.Unmarshal([]byte(strings.TrimPrefix(block, "event: started\ndata: ")), &ev)
			if !strings.Contains(string(b), "event: end") {
				return ev.NodeID, fmt.Errorf("task did not end: %s", b)
			}
			return ev.NodeID, nil
		}
	}
	return "", fmt.Errorf("no started event: %s", b)
}

// placementView is what placement sees of model's engines, per node: this
// router's requests in flight, ejection, and the engine's own last load
// report (fresh, stale or unknown; busy slots, queue, KV use, its age and
// the last poll error). For the record when a balance goal is missed.
func (c *cluster) placementView(model string) string {
	st, b, err := c.req("GET", "/v2/nodes", nil)
	if err != nil || st != 200 {
		return fmt.Sprintf("/v2/nodes: %d %v", st, err)
	}
	var v struct {
		Nodes []struct {
			NodeID  string `json:"node_id"`
			Engines []struct {
				Model     string `json:"model"`
				Health    string `json:"health"`
				InFlight  int    `json:"in_flight"`
				EjectedMs int64  `json:"ejected_ms"`
				Live      *struct {
					State       string   `json:"state"`
					SlotsBusy   int      `json:"slots_busy"`
					Queue       int      `json:"queue"`
					KVUsage     *float64 `json:"kv_usage"`
					ReportAgeMs int64    `json:"report_age_ms"`
					Error       string   `json:"error"`
				} `json:"live"`
			} `json:"engines"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return "/v2/nodes: " + err.Error()
	}
	var parts []string
	for _, n := range v.Nodes {
		for _, e := range n.Engines {
			if e.Model != model {
				continue
			}
			s := fmt.Sprintf("%s: %s in_flight=%d ejected=%dms", n.NodeID, e.Health, e.InFlight, e.EjectedMs)
			if l := e.Live; l != nil {
				kv := "?"
				if l.KVUsage != nil {
					kv = fmt.Sprintf("%.2f", *l.KVUsage)
				}
				s += fmt.Sprintf(" live=%s busy=%d queue=%d kv=%s age=%dms", l.State, l.SlotsBusy, l.Queue, kv, l.ReportAgeMs)
				if l.Error != "" {
					s += " error=" + l.Error
				}
			}
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, "; ")
}
