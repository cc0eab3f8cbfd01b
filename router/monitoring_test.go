package router

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// capture records the collectors a component registers.
type capture struct{ cs []prometheus.Collector }

func (c *capture) Register(x prometheus.Collector) error   { c.cs = append(c.cs, x); return nil }
func (c *capture) MustRegister(xs ...prometheus.Collector) { c.cs = append(c.cs, xs...) }
func (c *capture) Unregister(prometheus.Collector) bool    { return false }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// exportedNames are the metric names the router defines.
func exportedNames(t *testing.T) map[string]bool {
	c := &capture{}
	if _, err := newMetrics(c, func() float64 { return 0 }, func() float64 { return 0 }); err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, col := range c.cs {
		ch := make(chan *prometheus.Desc, 16)
		go func() { col.Describe(ch); close(ch) }()
		for d := range ch {
			if m := fqName.FindStringSubmatch(d.String()); m != nil {
				names[m[1]] = true
			}
		}
	}
	if len(names) < 10 {
		t.Fatalf("only %d metric names found: the capture is broken", len(names))
	}
	return names
}

// docs/monitoring.md lists exactly the metrics the router exports.
func TestMonitoringDocListsEveryMetric(t *testing.T) {
	names := exportedNames(t)
	doc, err := os.ReadFile("../docs/monitoring.md")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(llorch_[a-z_]+)`").FindAllStringSubmatch(string(doc), -1) {
		if !driverMetric(m[1]) {
			listed[m[1]] = true
		}
	}
	var missing, extra []string
	for n := range names {
		if !listed[n] {
			missing = append(missing, n)
		}
	}
	for n := range listed {
		if !names[n] {
			extra = append(extra, n)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing)+len(extra) > 0 {
		t.Errorf("docs/monitoring.md and /metrics differ: not documented %v; documented but not exported %v", missing, extra)
	}
}

// Every query in the Grafana dashboard references a metric we export: the
// router's, or llama-server's (as recorded from the real engine).
func TestDashboardQueriesUseExportedMetrics(t *testing.T) {
	known := exportedNames(t)
	rec, err := filepath.Glob("../engine/testdata/llamacpp/metrics-*.txt")
	if err != nil || len(rec) == 0 {
		t.Fatal("no recorded llama-server metrics")
	}
	for _, f := range rec {
		b, _ := os.ReadFile(f)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "llamacpp:") {
				known[strings.FieldsFunc(l, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
			}
		}
	}
	raw, err := os.ReadFile("../deploy/grafana/llorch.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	metricRef := regexp.MustCompile(`\b(llorch_[a-z_]+|llamacpp:[a-z_]+)`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			refs := metricRef.FindAllString(tg.Expr, -1)
			if len(refs) == 0 {
				t.Errorf("panel %q: query %q references no llorch metric", p.Title, tg.Expr)
			}
			for _, r := range refs {
				n++
				base := r
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if strings.HasSuffix(r, suf) && known[strings.TrimSuffix(r, suf)] {
						base = strings.TrimSuffix(r, suf)
					}
				}
				if !known[base] {
					t.Errorf("panel %q uses %s, which nothing exports", p.Title, r)
				}
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d metric references found", n)
	}
}

// driverMetric names the driver's series (tested in driver/).
func driverMetric(n string) bool {
	for _, p := range []string{"llorch_driver_", "llorch_engine_", "llorch_gpu", "llorch_pool_"} { // pool: router/scaler's own test
		if strings.HasPrefix(n, p) {
			return true
		}
	}
	return false
}
