package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// maxProbeBody bounds what a probe reads: engine status pages are small, and
// a misbehaving engine must not make the supervisor buffer gigabytes.
const maxProbeBody = 4 << 20

// StatusError is an engine answering with an unexpected HTTP status.
type StatusError struct {
	URL    string
	Status int
	Body   string // the start of the body, for the error message
}

func (e *StatusError) Error() string {
	if e.Body == "" {
		return fmt.Sprintf("GET %s: status %d", e.URL, e.Status)
	}
	return fmt.Sprintf("GET %s: status %d: %s", e.URL, e.Status, e.Body)
}

// request sends one request with the engine's API key (when set) as a
// bearer token and returns the body of a 2xx answer.
func request(ctx context.Context, c *http.Client, method, url, key string, body io.Reader, contentType string) ([]byte, error) {
	if c == nil {
		c = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxProbeBody))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read body: %w", method, url, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		snippet := strings.TrimSpace(string(b))
		if len(snippet) > 200 {
			snippet = snippet[:200] + "…"
		}
		return nil, &StatusError{URL: url, Status: resp.StatusCode, Body: snippet}
	}
	return b, nil
}

func get(ctx context.Context, c *http.Client, url, key string) ([]byte, error) {
	return request(ctx, c, http.MethodGet, url, key, nil, "")
}

func getJSON(ctx context.Context, c *http.Client, url, key string, v any) error {
	b, err := get(ctx, c, url, key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: decode JSON: %w", url, err)
	}
	return nil
}

func postJSON(ctx context.Context, c *http.Client, url, key string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("POST %s: encode: %w", url, err)
	}
	b, err := request(ctx, c, http.MethodPost, url, key, bytes.NewReader(body), "application/json")
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("POST %s: decode JSON: %w", url, err)
	}
	return nil
}

// metrics is a scraped Prometheus text page: each sample's values by
// metric name, across label sets (vLLM and SGLang label per engine/rank).
type metrics map[string][]float64

func parseMetrics(b []byte) (metrics, error) {
	// UTF-8 validation accepts the colons engines use in names
	// ("llamacpp:requests_processing", "vllm:num_requests_running").
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	m := metrics{}
	for name, f := range fams {
		for _, s := range f.GetMetric() {
			var v float64
			switch {
			case s.Gauge != nil:
				v = s.Gauge.GetValue()
			case s.Counter != nil:
				v = s.Counter.GetValue()
			case s.Untyped != nil:
				v = s.Untyped.GetValue()
			default:
				continue
			}
			m[name] = append(m[name], v)
		}
	}
	return m, nil
}

func scrape(ctx context.Context, c *http.Client, url, key string) (metrics, error) {
	b, err := get(ctx, c, url, key)
	if err != nil {
		return nil, err
	}
	m, err := parseMetrics(b)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return m, nil
}

// sum adds a metric over its label sets; ok is false when it is absent.
func (m metrics) sum(name string) (float64, bool) {
	vs, ok := m[name]
	if !ok {
		return 0, false
	}
	var t float64
	for _, v := range vs {
		t += v
	}
	return t, true
}

// max is the largest value of a metric over its label sets: the fullest
// KV cache is what limits the next request.
func (m metrics) max(name string) (float64, bool) {
	vs, ok := m[name]
	if !ok || len(vs) == 0 {
		return 0, false
	}
	mx := vs[0]
	for _, v := range vs[1:] {
		mx = max(mx, v)
	}
	return mx, true
}

// first returns the first of names that is present.
func (m metrics) first(agg func(string) (float64, bool), names ...string) (float64, bool) {
	for _, n := range names {
		if v, ok := agg(n); ok {
			return v, true
		}
	}
	return 0, false
}

// checkSpec validates the fields every adapter needs, naming the field.
func checkSpec(engine string, s Spec, needModelName bool) error {
	switch {
	case s.Model == "":
		return fmt.Errorf("%s: spec.model is required", engine)
	case needModelName && s.ModelName == "":
		return fmt.Errorf("%s: spec.model_name is required", engine)
	case s.Host == "":
		return fmt.Errorf("%s: spec.host is required", engine)
	case s.Port <= 0 || s.Port > 65535:
		return fmt.Errorf("%s: spec.port %d is out of range 1-65535", engine, s.Port)
	case s.Ctx < 0:
		return fmt.Errorf("%s: spec.ctx %d must be >= 0", engine, s.Ctx)
	case s.Slots < 0:
		return fmt.Errorf("%s: spec.slots %d must be >= 0", engine, s.Slots)
	case s.GPULayers < -1:
		return fmt.Errorf("%s: spec.gpu_layers %d must be >= -1", engine, s.GPULayers)
	case s.Threads < 0:
		return fmt.Errorf("%s: spec.threads %d must be >= 0", engine, s.Threads)
	case (s.TLSCertFile == "") != (s.TLSKeyFile == ""):
		return fmt.Errorf("%s: spec.tls_cert_file and spec.tls_key_file: set both or neither", engine)
	}
	if a, err := Get(engine); err == nil && s.TLSCertFile != "" && !ServesTLS(a) {
		return fmt.Errorf("%s: the engine cannot serve TLS itself; the task supervisor's relay must serve it (leave spec.tls_* empty)", engine)
	}
	return nil
}

func itoa(n int) string { return strconv.Itoa(n) }

// clampUnit keeps a usage ratio within 0..1 (some engines report 0..100
// in older versions; those are divided first by the caller).
func clampUnit(v float64) float64 {
	return min(max(v, 0), 1)
}
