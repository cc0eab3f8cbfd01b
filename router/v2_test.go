package router

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/openaifixture"
)

type submitResp struct {
	TaskID           string            `json:"task_id"`
	QueuePosition    int               `json:"queue_position"`
	PredictedStartMs int64             `json:"predicted_start_ms"`
	Streams          map[string]string `json:"streams"`
}

func (h *harness) submit(t *testing.T, body string) (int, http.Header, submitResp, string) {
	t.Helper()
	st, hdr, raw := h.do("POST", "/v2/tasks", body)
	var s submitResp
	_ = json.Unmarshal([]byte(raw), &s)
	return st, hdr, s, raw
}

// events reads a task's whole SSE stream (until the server ends it).
func (h *harness) events(t *testing.T, id string) []sseEvent {
	t.Helper()
	resp, err := h.cl.Do(h.req("GET", "/v2/tasks/"+id+"/events", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("events: %d %v", resp.StatusCode, resp.Header)
	}
	return readSSE(t, resp.Body)
}

func names(evs []sseEvent) string {
	var n []string
	last := ""
	for _, e := range evs {
		if e.event == "token" && last == "token" {
			continue
		}
		n = append(n, e.event)
		last = e.event
	}
	return strings.Join(n, ",")
}

func taskBody(model, extra string) string {
	return `{"model_ref":"` + model + `","prompt":"hello","max_tokens":8` + extra + `}`
}

func v2Harness(t *testing.T, b openaifixture.Behavior, slots int, mut func(*Config)) (*harness, *openaifixture.Server) {
	fx, u := startFixture(t)
	fx.SetBehavior(b)
	in := inst(t, "a", "n1", testModel, u)
	in.Slots = slots
	in.PoolID = "p1"
	in.NodeModels = "tiny:1:abc;staged-only:2:def"
	return newHarness(t, mut, in), fx
}

func TestV2TaskStreamsEvents(t *testing.T) {
	h, _ := v2Harness(t, openaifixture.Behavior{Tokens: 5}, 4, nil)
	st, hdr, s, raw := h.submit(t, taskBody(testModel, `,"task_id":"t-1","priority":"batch"`))
	if st != 202 || s.TaskID != "t-1" || s.QueuePosition != 0 || s.Streams["sse"] != "/v2/tasks/t-1/events" || hdr.Get(CorrelationHeader) == "" {
		t.Fatalf("submit: %d %s", st, raw)
	}
	evs := h.events(t, "t-1")
	if got := names(evs); got != "started,token,metrics,end" {
		t.Fatalf("events %s", got)
	}
	var end map[string]any
	json.Unmarshal([]byte(evs[len(evs)-1].data), &end)
	if end["tokens_out"] != float64(5) || end["decode_time_ms"] == nil || end["decode_ms"] == nil {
		t.Errorf("end %v", end)
	}
	var tok struct {
		T string `json:"t"`
		I int    `json:"i"`
	}
	json.Unmarshal([]byte(evs[1].data), &tok)
	if tok.T == "" || tok.I != 0 {
		t.Errorf("token %+v", tok)
	}
	// A late reader gets the whole log again.
	if got := names(h.events(t, "t-1")); got != "started,token,metrics,end" {
		t.Errorf("replay %s", got)
	}
	if st, _, _ := h.do("GET", "/v2/tasks/nope/events", ""); st != 404 {
		t.Errorf("unknown task: %d", st)
	}
	if st, _, raw := h.do("POST", "/v2/tasks", taskBody(testModel, `,"task_id":"t-1"`)); st != 409 {
		t.Errorf("duplicate task_id: %d %s", st, raw)
	}
}

func TestV2CancelMidStream(t *testing.T) {
	h, fx := v2Harness(t, openaifixture.Behavior{Tokens: 200, TokenDelay: 20 * time.Millisecond}, 4, nil)
	_, _, s, _ := h.submit(t, taskBody(testModel, ""))
	resp, err := h.cl.Do(h.req("GET", "/v2/tasks/"+s.TaskID+"/events", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	tokens := 0
	for tokens < 3 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "event: token\n" {
			tokens++
		}
	}
	if st, _, _ := h.do("POST", "/v2/tasks/"+s.TaskID+"/cancel", ""); st != 204 {
		t.Fatalf("cancel: %d", st)
	}
	rest := readSSE(t, br)
	if len(rest) == 0 {
		t.Fatal("stream did not end with an event")
	}
	sawErr := false
	for _, e := range rest {
		if sawErr && e.event == "token" {
			t.Fatal("token after cancel")
		}
		if e.event == "error" {
			sawErr = true
			if !strings.Contains(e.data, `"CANCELLED"`) {
				t.Errorf("error %s", e.data)
			}
		}
	}
	if !sawErr {
		t.Errorf("no error CANCELLED: %v", rest)
	}
	waitFor(t, 3*time.Second, "upstream cancelled", func() bool { return fx.Canceled() >= 1 })
	if st, _, _ := h.do("POST", "/v2/tasks/zzz/cancel", ""); st != 404 {
		t.Errorf("cancel unknown: %d", st)
	}
}

// A task submitted while the only slot is busy queues (202 with its
// position) and its reader gets its events once the first task ends.
func TestV2QueuedTaskRunsAfterTheFirst(t *testing.T) {
	h, _ := v2Harness(t, openaifixture.Behavior{Tokens: 10, TokenDelay: 20 * time.Millisecond}, 1, nil)
	_, _, first, _ := h.submit(t, taskBody(testModel, ""))
	waitFor(t, 2*time.Second, "first task running", func() bool { return h.rt.state.InFlight("a") == 1 })
	st, _, second, raw := h.submit(t, taskBody(testModel, ""))
	if st != 202 || second.QueuePosition != 0 || second.PredictedStartMs <= 0 {
		t.Fatalf("queued submit: %d %s", st, raw)
	}
	evs := h.events(t, second.TaskID)
	if got := names(evs); got != "started,token,metrics,end" {
		t.Fatalf("queued task events %s", got)
	}
	if got := names(h.events(t, first.TaskID)); got != "started,token,metrics,end" {
		t.Fatalf("first task events %s", got)
	}
}

func TestV2QueueFullPolicies(t *testing.T) {
	for _, policy := range []string{"reject", "drop-lru"} {
		t.Run(policy, func(t *testing.T) {
			h, _ := v2Harness(t, openaifixture.Behavior{Tokens: 50, TokenDelay: 20 * time.Millisecond}, 1,
				func(c *Config) { c.QueueCapacity = 1; c.QueuePolicy = policy })
			_, _, running, _ := h.submit(t, taskBody(testModel, ""))
			waitFor(t, 2*time.Second, "running", func() bool { return h.rt.state.InFlight("a") == 1 })
			_, _, queued, _ := h.submit(t, taskBody(testModel, `,"priority":"batch"`))
			st, hdr, raw := h.do("POST", "/v2/tasks", taskBody(testModel, ""))
			if policy == "reject" {
				if st != 429 || hdr.Get("Retry-After") == "" || hdr.Get("X-Backoff-Ms") == "" ||
					!strings.Contains(raw, `"code":"ADMISSION_REJECT"`) || !strings.Contains(raw, `"type":"rate_limit_error"`) || !strings.Contains(raw, `"retriable":true`) {
					t.Fatalf("full queue: %d %v %s", st, hdr, raw)
				}
			} else {
				if st != 202 {
					t.Fatalf("drop-lru admits the newcomer: %d %s", st, raw)
				}
				evs := h.events(t, queued.TaskID)
				if len(evs) != 1 || evs[0].event != "error" || !strings.Contains(evs[0].data, "QUEUE_FULL_DROP_LRU") {
					t.Fatalf("evicted task events: %v", evs)
				}
			}
			h.do("POST", "/v2/tasks/"+running.TaskID+"/cancel", "")
		})
	}
}

func TestV2ValidationAndPlacementErrors(t *testing.T) {
	h, _ := v2Harness(t, openaifixture.Behavior{}, 4, nil)
	cases := []struct {
		body, code string
		status     int
	}{
		{taskBody(testModel, `,"deadline_ms":0`), "DEADLINE_UNMET", 400},
		{taskBody(testModel, `,"bogus":1`), "INVALID_PARAMS", 400},
		{taskBody(testModel, `,"max_tokens":"x"`), "INVALID_PARAMS", 400},
		{`{"model_ref":"tiny","max_tokens":8}`, "INVALID_PARAMS", 400},
		{taskBody(testModel, `,"priority":"urgent"`), "INVALID_PARAMS", 400},
		{taskBody("nope", ""), "MODEL_NOT_AVAILABLE", 404},
		{taskBody(testModel, `,"placement":{"mode":"pin","pin_node_id":"n9"}`), "NODE_UNAVAILABLE", 503},
		{taskBody(testModel, `,"placement":{"mode":"pin","pin_pool_id":"zz"}`), "INVALID_PARAMS", 400},
	}
	for _, c := range cases {
		st, _, raw := h.do("POST", "/v2/tasks", c.body)
		if st != c.status || !strings.Contains(raw, `"code":"`+c.code+`"`) {
			t.Errorf("%s: %d %s", c.body, st, raw)
		}
	}
	if st, _, raw := h.do("POST", "/v2/tasks", taskBody(testModel, `,"bogus":1`)); !strings.Contains(raw, `"param":"bogus"`) {
		t.Errorf("unknown field not named: %d %s", st, raw)
	}
	st, _, raw := h.do("POST", "/v2/tasks", taskBody(testModel, `,"placement":{"mode":"pin","pin_node_id":"n1"}`))
	if st != 202 {
		t.Errorf("pin to n1: %d %s", st, raw)
	}
}

func TestV2NodesAvailabilityCapabilities(t *testing.T) {
	h, _ := v2Harness(t, openaifixture.Behavior{}, 4, nil)
	st, _, raw := h.do("GET", "/v2/nodes", "")
	var nodes struct {
		Nodes []nodeView `json:"nodes"`
		Count int        `json:"count"`
	}
	json.Unmarshal([]byte(raw), &nodes)
	if st != 200 || nodes.Count != 1 || nodes.Nodes[0].NodeID != "n1" || !nodes.Nodes[0].Healthy ||
		len(nodes.Nodes[0].Engines) != 1 || nodes.Nodes[0].Engines[0].Slots != 4 || len(nodes.Nodes[0].Models) != 2 {
		t.Fatalf("nodes: %d %s", st, raw)
	}
	st, _, raw = h.do("GET", "/v2/catalog/availability", "")
	var av struct {
		Models []modelAvailability `json:"models"`
	}
	json.Unmarshal([]byte(raw), &av)
	got := fmt.Sprint(av.Models)
	if st != 200 || len(av.Models) != 2 || av.Models[0].ModelID != "staged-only" || av.Models[0].Replicas != 0 || av.Models[0].TotalNodes != 1 ||
		av.Models[1].ModelID != testModel || av.Models[1].Replicas != 1 || av.Models[1].TotalCapacity != 4 {
		t.Fatalf("availability: %s", got)
	}
	st, _, raw = h.do("GET", "/v2/meta/capabilities", "")
	if st != 200 || !strings.Contains(raw, `"api_version":"2.0"`) || !strings.Contains(raw, `"engine":"fixture"`) {
		t.Fatalf("capabilities: %d %s", st, raw)
	}
	// Everything under /v2 needs the token.
	for _, p := range []string{"/v2/nodes", "/v2/catalog/availability", "/v2/meta/capabilities"} {
		if st, _, _ := h.do("GET", p, "", "Authorization", ""); st != 401 {
			t.Errorf("%s without token: %d", p, st)
		}
	}
}

// The OpenAI endpoints queue too: with the only slot busy, a second
// request waits and is answered once the first finishes; a full queue is 429.
func TestV1AdmissionQueue(t *testing.T) {
	h, _ := v2Harness(t, openaifixture.Behavior{Tokens: 10, TokenDelay: 30 * time.Millisecond}, 1, func(c *Config) { c.QueueCapacity = 1 })
	done := make(chan int, 2)
	go func() { st, _, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); done <- st }()
	waitFor(t, 2*time.Second, "first running", func() bool { return h.rt.state.InFlight("a") == 1 })
	go func() { st, _, _ := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); done <- st }()
	waitFor(t, 2*time.Second, "second queued", func() bool { i, _ := h.rt.queues.Depth(testModel); return i == 1 })
	st, hdr, raw := h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
	if st != 429 || hdr.Get("Retry-After") == "" || !strings.Contains(raw, "ADMISSION_REJECT") {
		t.Errorf("third: %d %s", st, raw)
	}
	for i := 0; i < 2; i++ {
		if st := <-done; st != 200 {
			t.Errorf("queued request answered %d", st)
		}
	}
	if st, _, raw := h.do("POST", "/v1/chat/completions", chatBody(testModel, false), "X-Priority", "urgent"); st != 400 || !strings.Contains(raw, "X-Priority") {
		t.Errorf("bad priority: %d %s", st, raw)
	}
}

// /v2 tasks take the /v1 upstream path: an engine's 4xx is reported, not
// retried elsewhere; a stream without a first byte within the first-byte
// timeout is retried on the next instance.
func TestV2SharesTheUpstreamPath(t *testing.T) {
	refusing, ur := startFixture(t)
	refusing.SetBehavior(openaifixture.Behavior{Fault: openaifixture.FaultStatus, Status: 400})
	other, uo := startFixture(t)
	h := newHarness(t, func(c *Config) { c.SchedulerProfile = "least-in-flight" },
		inst(t, "a", "n1", testModel, ur), inst(t, "b", "n2", testModel, uo))
	_, _, s, raw := h.submit(t, taskBody(testModel, ""))
	evs := h.events(t, s.TaskID)
	if last := evs[len(evs)-1]; last.event != "error" || !strings.Contains(last.data, CodeEngineError) || !strings.Contains(last.data, `"status":400`) {
		t.Fatalf("a 4xx from the engine: %s %v", raw, evs)
	}
	if other.Requests() != 0 {
		t.Fatal("a task the engine refused with 400 was re-run elsewhere")
	}

	const firstByte = 2 * time.Second
	refusing.SetBehavior(openaifixture.Behavior{FirstByteDelay: 30 * firstByte})
	h2 := newHarness(t, func(c *Config) { c.SchedulerProfile = "least-in-flight"; c.FirstByteTimeout = firstByte },
		inst(t, "a", "n1", testModel, ur), inst(t, "b", "n2", testModel, uo))
	_, _, s, _ = h2.submit(t, taskBody(testModel, ""))
	if got := names(h2.events(t, s.TaskID)); got != "started,token,metrics,end" {
		t.Fatalf("a stalled first instance: events %s", got)
	}
	if other.Finished() != 1 {
		t.Fatalf("the next instance finished %d tasks, want 1", other.Finished())
	}
	waitFor(t, 5*time.Second, "the stalled request cancelled", func() bool { return refusing.Canceled() == 1 })
}
