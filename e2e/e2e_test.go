package e2e

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"
)

type result struct{ scenario, engine, outcome, measured string }

var (
	resMu   sync.Mutex
	results []result
)

func record(scenario, engine string, ok bool, format string, args ...any) {
	resMu.Lock()
	defer resMu.Unlock()
	o := "pass"
	if !ok {
		o = "MISSED GOAL"
	}
	results = append(results, result{scenario, engine, o, fmt.Sprintf(format, args...)})
	fmt.Printf("e2e: %-44s %-8s %s\n", scenario, o, fmt.Sprintf(format, args...))
}

// must records a behaviour the system has to show (not a timing goal): when
// it does not, the test fails as well as the table saying so.
func must(t *testing.T, scenario, engine string, ok bool, format string, args ...any) {
	t.Helper()
	record(scenario, engine, ok, format, args...)
	if !ok {
		t.Errorf("%s: %s", scenario, fmt.Sprintf(format, args...))
	}
}

// goal records a timing or balance goal and fails the test when it is
// missed. Each goal's limit is the documented goal itself; the comment next
// to each call says why that bound already holds on a loaded 2-core CI
// machine (the measured value is typically far below it) rather than
// widening it.
func goal(t *testing.T, scenario, engine string, ok bool, format string, args ...any) {
	t.Helper()
	record(scenario, engine, ok, format, args...)
	if !ok {
		t.Errorf("MISSED GOAL %s: %s", scenario, fmt.Sprintf(format, args...))
	}
}

// TestMain prints the summary table after the run (make e2e shows it).
func TestMain(m *testing.M) {
	code := m.Run()
	resMu.Lock()
	if len(results) > 0 {
		w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "\nSCENARIO\tENGINE\tRESULT\tMEASURED")
		for _, r := range results {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.scenario, r.engine, r.outcome, r.measured)
		}
		w.Flush()
	}
	resMu.Unlock()
	os.Exit(code)
}

const real = "llama-server"

func TestE2E(t *testing.T) {
	c := bootCluster(t, false)
	f := c.f
	tasks := map[string]*task{}

	// 1. Clusters come up: 2 nodes, then 3.
	t0 := time.Now()
	tasks["n1"] = c.startTask("n1", "tiny", enginePort)
	tasks["n2"] = c.startTask("n2", "tiny", enginePort)
	c.waitView(30*time.Second, "2 engines", func(v nodeEngines) bool { return v.count("tiny") == 2 })
	record("1. 2-node cluster up (StartTask → router view)", real, true, "%v", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	tasks["n3"] = c.startTask("n3", "tiny", enginePort)
	c.waitView(30*time.Second, "3 engines", func(v nodeEngines) bool { return v.count("tiny") == 3 })
	passing, _, err := c.api(c.routerToken).Health().Service("llorch-engine", "", true, nil)
	if err != nil || len(passing) != 3 {
		t.Fatalf("Consul passing instances: %d %v", len(passing), err)
	}
	record("1. 3-node cluster up, healthy in Consul and /v2/nodes", real, true, "%v, 3 passing", time.Since(t0).Round(time.Millisecond))
	for i := 0; i < 6; i++ {
		if st, err := c.chat("tiny"); st != 200 {
			t.Fatalf("chat through the router: %d %v", st, err)
		}
	}
	// Engines are not callable without the engine token (only the router has it).
	resp, err := c.http.Post("http://"+subnet+"11:8081/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"tiny","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil || resp.StatusCode != 401 {
		t.Fatalf("engine without its token: %v %v", resp, err)
	}
	resp.Body.Close()
	record("1. engine refuses callers without the engine token", real, true, "HTTP 401")

	// 2. Registration / deregistration.
	t0 = time.Now()
	c.stopTask(tasks["n3"])
	d := c.waitView(10*time.Second, "n3 gone", func(v nodeEngines) bool { return !v.has("n3", "tiny") })
	// Goal < 2 s. StopTask deregisters at once and the router's blocking
	// query wakes on the change (tens of ms); the view is polled every
	// 20 ms. The rest of the 2 s is the margin for a loaded machine.
	goal(t, "2. pool stopped → disappears", real, d < 2*time.Second, "%v (goal <2s)", d.Round(time.Millisecond))
	t0 = time.Now()
	tasks["n3"] = c.startTask("n3", "tiny", enginePort)
	d = c.waitView(20*time.Second, "n3 back", func(v nodeEngines) bool { return v.has("n3", "tiny") })
	record("2. pool started → appears", real, true, "%v", d.Round(time.Millisecond))

	// 3. Engine crash.
	engineKilled(t, c, tasks)

	// 4. Hung engine and hung driver.
	engineAndDriverHung(t, c, tasks)

	// 5. Node loss under load: requests keep flowing; none may be lost.
	nodeLostUnderLoad(t, c, "n2")

	// 6. Partition heals.
	if err := f.heal("n2"); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	d = c.waitView(60*time.Second, "n2 back after the partition healed", func(v nodeEngines) bool { return v.has("n2", "tiny") })
	// No time goal: the majority side only notices a node it declared dead
	// on memberlist's push/pull sync (30 s in Consul's LAN profile, not
	// configurable in 1.14), so this takes up to about 30 s.
	record("6. partition heals → node back, no manual step", real, true, "%v (Consul push/pull sync ≤30s)", d.Round(time.Millisecond))

	// 7. Placement by model presence: solo runs only on n1 while n2 and
	// n3 serve other models (tiny, and other2 on n2), so a request for
	// solo could go elsewhere only if placement ignored the model.
	tasks["solo"] = c.startTask("n1", "solo", enginePort+1)
	tasks["other2"] = c.startTask("n2", "other2", enginePort+1)
	c.waitView(20*time.Second, "solo on n1, other2 on n2", func(v nodeEngines) bool { return v.has("n1", "solo") && v.has("n2", "other2") })
	view := c.view()
	must(t, "7. other nodes serve other models", real, view.count("solo") == 1 && view.has("n2", "other2") && view.has("n3", "tiny"),
		"solo on %d node(s), n2 %v, n3 %v", view.count("solo"), view["n2"], view["n3"])
	elsewhere := 0
	for i := 0; i < 10; i++ {
		node, err := c.taskNode("solo", "")
		if err != nil {
			t.Fatal(err)
		}
		if node != "n1" {
			elsewhere++
		}
	}
	must(t, "7. model on one node → all requests there", real, elsewhere == 0, "10 of 10 on n1 (%d elsewhere)", elsewhere)
	// Pinned to a node that does not serve solo: refused, not rerouted.
	st, body, _ := c.req("POST", "/v2/tasks", []byte(`{"model_ref":"solo","prompt":"x","max_tokens":4,"placement":{"mode":"pin","pin_node_id":"n3"}}`))
	must(t, "7. solo pinned to n3 (serves only tiny) → refused", real, st == 503 && strings.Contains(string(body), "NODE_UNAVAILABLE"), "HTTP %d %s", st, strings.TrimSpace(string(body)))
	// And the pin works where the model is: solo pinned to n1 runs on n1.
	node, err := c.taskNode("solo", "n1")
	must(t, "7. solo pinned to n1 → runs there", real, err == nil && node == "n1", "node %q %v", node, err)
	st, body, _ = c.req("POST", "/v1/chat/completions", []byte(`{"model":"nowhere","messages":[{"role":"user","content":"x"}]}`))
	okNone := st == 404 && strings.Contains(string(body), "MODEL_NOT_AVAILABLE")
	must(t, "7. model on no node → MODEL_NOT_AVAILABLE", real, okNone, "HTTP %d", st)
	c.stopTask(tasks["other2"])
	delete(tasks, "other2")

	// 8. Load balance over equal nodes: 24 concurrent tasks of 24
	// sessions. Each session's home is its place on the model's ring
	// (session affinity), so sessions spread over the nodes whatever the
	// timing: a node is no session's home with odds 3·(2/3)^24 ≈ 2e-4.
	// (The same prompt without sessions was the workload before: "hello"
	// is too short for an affinity key, so placement is by load alone and
	// equal loads go to the first instance in sorted order; when tasks
	// ended before the next was placed, the third node got none: 0/18/6.)
	viewBefore := c.placementView("tiny")
	counts := map[string]int{}
	var lbErrs []string
	var cmu sync.Mutex
	var lwg sync.WaitGroup
	for i := 0; i < 24; i++ {
		lwg.Add(1)
		go func() {
			defer lwg.Done()
			node, err := c.sessionTaskNode("tiny", "", fmt.Sprintf("lb-%d", i))
			cmu.Lock()
			defer cmu.Unlock()
			if err != nil {
				lbErrs = append(lbErrs, err.Error())
				return
			}
			counts[node]++
		}()
	}
	lwg.Wait()
	var per []int
	for _, n := range []string{"n1", "n2", "n3"} {
		per = append(per, counts[n])
	}
	for _, e := range lbErrs {
		t.Logf("load-balance task failed: %s", e)
	}
	sort.Ints(per)
	total := per[0] + per[1] + per[2]
	must(t, "8. 24 concurrent tasks all answered", real, total == 24, "%d of 24", total)
	// Goal: every equal node takes part (the spread itself is reported,
	// not bounded: it is the ring's, 24 draws). No margin needed: it
	// counts tasks.
	goal(t, "8. load balance over 3 equal nodes", real, per[0] > 0, "n1/n2/n3 = %d/%d/%d, max/min %.2f (goal: each >0)", counts["n1"], counts["n2"], counts["n3"], float64(per[2])/float64(max(per[0], 1)))
	if per[0] == 0 {
		t.Logf("placement's view before the tasks: %s; after: %s", viewBefore, c.placementView("tiny"))
	}

	// 9. Consul server restart: the router serves from its snapshot.
	consulServerRestart(t, c, 3)

	// 10. Plugin restart on a node: recovered, engine not restarted.
	pluginRestart(t, c, tasks)

	// 11. Streams survive their node's link going down (e2e/resume_test.go).
	streamsSurviveNodeLoss(t, c, tasks)

	// 12. No raw token in any log of the run (a per-team key included).
	if err := c.useKey(); err != nil {
		t.Errorf("per-team key: %v", err)
	}
	leaks := c.scanLeaks()
	must(t, "12. token leak scan over every log", real, len(leaks) == 0, "%d files scanned, %d raw tokens%s", c.scanned, len(leaks), strings.Join(append([]string{""}, leaks...), " in "))

	resMu.Lock()
	missed := 0
	for _, r := range results {
		if r.outcome != "pass" {
			missed++
		}
	}
	resMu.Unlock()
	if missed > 0 {
		t.Errorf("%d scenario(s) missed their goal (see the table)", missed)
	}
	for _, h := range []string{"n1", "n2", "n3"} {
		for _, tk := range tasks {
			if tk.host == h {
				c.stopTask(tk)
			}
		}
	}
}
