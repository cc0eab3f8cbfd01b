package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/registry"
)

// realTLS labels the TLS variant's rows in the results table.
const realTLS = "llama-server+TLS"

// TestE2ETLS is the suite's core with TLS on every hop (tls.go): clients
// → router over HTTPS verified with the run's CA; router → engines over
// HTTPS (engines serve the task's pair from secrets/, are announced tls=1
// and verified against --engine-ca-file, the router offering a client
// certificate); router and drivers → their local Consul agent on an
// HTTPS-only port that demands client certificates, ACLs on; agent RPC
// over verified TLS and gossip encrypted. It runs the scenarios TLS can
// change (placement, engine kill and hang, driver hang, node loss under
// load, Consul server restart, plugin restart, streams resumed across node
// loss) rather than the whole suite again (the partition heal's 30 s
// push/pull wait and the load spread do not depend on TLS), and fails if
// any hop answers in the clear.
func TestE2ETLS(t *testing.T) {
	c := bootCluster(t, true)
	tasks := map[string]*task{}
	lbl := c.label()

	// 1. Up over TLS: three engines, each announced tls=1.
	t0 := time.Now()
	for _, h := range []string{"n1", "n2", "n3"} {
		tasks[h] = c.startTask(h, "tiny", enginePort)
	}
	c.waitView(45*time.Second, "3 TLS engines", func(v nodeEngines) bool { return v.count("tiny") == 3 })
	record("1. 3-node cluster up, healthy in Consul and /v2/nodes", lbl, true, "%v", time.Since(t0).Round(time.Millisecond))
	passing, _, err := c.api(c.routerToken).Health().Service(registry.DefaultServiceName, "", true, nil)
	if err != nil {
		t.Fatalf("Consul over HTTPS with the router token: %v", err)
	}
	var engines []string
	announcedTLS := 0
	for _, e := range passing {
		engines = append(engines, fmt.Sprintf("%s:%d", e.Service.Address, e.Service.Port))
		if e.Service.Meta[registry.MetaTLS] == "1" {
			announcedTLS++
		}
	}
	must(t, "TLS. engines announced tls=1 (read over HTTPS, router token)", lbl, len(passing) == 3 && announcedTLS == 3,
		"%d of %d passing instances", announcedTLS, len(passing))
	answered := 0
	for i := 0; i < 6; i++ {
		if st, _ := c.chat("tiny"); st == 200 {
			answered++
		}
	}
	must(t, "TLS. chats: HTTPS → router → HTTPS engines", lbl, answered == 6, "%d of 6 answered", answered)
	// An engine is reachable over HTTPS with the CA and still wants the
	// engine token (the router's, which it never hands out).
	st, err := c.engineStatus("https://" + subnet + "11:8081/v1/chat/completions")
	must(t, "TLS. engine over HTTPS refuses callers without the engine token", lbl, err == nil && st == 401, "HTTP %d %v", st, err)

	// No hop answers in the clear: a client, router, driver or Prometheus
	// that fell back to plain HTTP would find nothing to talk to.
	refusals := c.plaintextRefusals(engines)
	var keys, plain []string
	for k, why := range refusals {
		keys = append(keys, k+": "+why)
		if why == "" {
			plain = append(plain, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("plain HTTP: %s", k)
	}
	// And the router says so itself: its listener is TLS and its Consul
	// address https://.
	rlog, _ := os.ReadFile(filepath.Join(c.dir, "logs", "router.log"))
	said := strings.Contains(string(rlog), "tls=true consul=https://127.0.0.1:8501")
	must(t, "TLS. router listens on TLS, reaches Consul at https://", lbl, said, "router log has \"tls=true consul=https://127.0.0.1:8501\": %v", said)
	must(t, "TLS. no hop answers plain HTTP", lbl, len(refusals) == 8 && len(plain) == 0,
		"%d tried (router, 3 engines, :8500 of 4 Consul agents), answered in the clear: %v", len(refusals), plain)

	// 7. Placement by model presence, over TLS.
	tasks["solo"] = c.startTask("n1", "solo", enginePort+1)
	c.waitView(20*time.Second, "solo on n1", func(v nodeEngines) bool { return v.has("n1", "solo") })
	elsewhere := 0
	for i := 0; i < 6; i++ {
		node, err := c.taskNode("solo", "")
		if err != nil {
			t.Fatal(err)
		}
		if node != "n1" {
			elsewhere++
		}
	}
	must(t, "7. model on one node → all requests there", lbl, elsewhere == 0, "6 of 6 on n1 (%d elsewhere)", elsewhere)

	// 3. Engine crash. 4. Hung engine (the supervisor's probes are TLS
	// here, pinned to the task's certificate) and hung driver.
	engineKilled(t, c, tasks)
	engineAndDriverHung(t, c, tasks)
	// 5. Node loss under load (n2 stays cut: the rest uses n1 and n3).
	nodeLostUnderLoad(t, c, "n2")
	// 9. The Consul server restarts: the router's HTTPS client and the
	// agents' TLS RPC reconnect. 10. A plugin restart recovers its task.
	consulServerRestart(t, c, 2)
	pluginRestart(t, c, tasks)
	// 11. Streams resumed across a node's link going down, over TLS.
	streamsSurviveNodeLoss(t, c, tasks)

	// 12. No raw token or private key in any log.
	if err := c.useKey(); err != nil {
		t.Errorf("per-team key: %v", err)
	}
	leaks := c.scanLeaks()
	must(t, "12. token leak scan over every log", lbl, len(leaks) == 0, "%d files scanned, %d raw tokens or keys%s", c.scanned, len(leaks), strings.Join(append([]string{""}, leaks...), " in "))

	for _, tk := range tasks {
		c.stopTask(tk)
	}
}

// label is the run's ENGINE column in the results table.
func (c *cluster) label() string {
	if c.tls != nil {
		return realTLS
	}
	return real
}
