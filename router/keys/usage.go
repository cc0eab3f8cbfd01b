package keys

import (
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Counts is what requests made with a key used of one model.
type Counts struct {
	Requests         int64 `json:"requests"`
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	Errors           int64 `json:"errors"`
}

func (c *Counts) add(o Counts) {
	c.Requests += o.Requests
	c.PromptTokens += o.PromptTokens
	c.CompletionTokens += o.CompletionTokens
	c.Errors += o.Errors
}

// MaxWindow is the longest window Usage answers for: per-minute history
// is kept this long.
const MaxWindow = 24 * time.Hour

type usageKey struct{ key, model string }

type minute struct {
	at int64 // Unix minute
	Counts
}

type series struct {
	total   Counts
	minutes []minute // ascending, at most MaxWindow old
}

// Usage accounts what each key used, by model: totals since the router
// started, per-minute history for windows, and Prometheus series. Key
// names are operator-made and models are only ever ones the fleet serves,
// so the label sets stay bounded.
type Usage struct {
	mu    sync.Mutex
	start time.Time
	now   func() time.Time
	by    map[usageKey]*series

	requests, errors *prometheus.CounterVec
	tokens           *prometheus.CounterVec
	refused          *prometheus.CounterVec
}

// NewUsage registers the usage series on reg.
func NewUsage(reg prometheus.Registerer) (*Usage, error) {
	u := &Usage{start: time.Now(), now: time.Now, by: map[usageKey]*series{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llorch_key_requests_total",
			Help: "Requests an engine answered, by API key name and model."}, []string{"key", "model"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llorch_key_errors_total",
			Help: "Admitted requests that ended in an error (engine status >= 400, a broken answer, no instance answering), by API key name and model."}, []string{"key", "model"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llorch_key_tokens_total",
			Help: "Tokens as the engines reported them in usage, by API key name, model and kind (prompt, completion)."}, []string{"key", "model", "kind"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llorch_key_refused_total",
			Help: "Requests refused for their API key before placement, by key name and reason (model_not_allowed, rpm, tpm, concurrent)."}, []string{"key", "reason"}),
	}
	for _, c := range []prometheus.Collector{u.requests, u.errors, u.tokens, u.refused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return u, nil
}

// Refused counts a request refused before placement.
func (u *Usage) Refused(key, reason string) { u.refused.WithLabelValues(key, reason).Inc() }

// Record adds one request's use.
func (u *Usage) Record(key, model string, c Counts) {
	u.requests.WithLabelValues(key, model).Add(float64(c.Requests))
	u.errors.WithLabelValues(key, model).Add(float64(c.Errors))
	u.tokens.WithLabelValues(key, model, "prompt").Add(float64(c.PromptTokens))
	u.tokens.WithLabelValues(key, model, "completion").Add(float64(c.CompletionTokens))
	u.mu.Lock()
	defer u.mu.Unlock()
	k := usageKey{key, model}
	s := u.by[k]
	if s == nil {
		s = &series{}
		u.by[k] = s
	}
	s.total.add(c)
	at := u.now().Unix() / 60
	if n := len(s.minutes); n > 0 && s.minutes[n-1].at == at {
		s.minutes[n-1].add(c)
	} else {
		s.minutes = append(s.minutes, minute{at: at, Counts: c})
	}
	cut := at - int64(MaxWindow/time.Minute)
	i := sort.Search(len(s.minutes), func(i int) bool { return s.minutes[i].at > cut })
	if i > 0 {
		s.minutes = append(s.minutes[:0], s.minutes[i:]...)
	}
}

// Row is one key's use of one model.
type Row struct {
	Key   string `json:"key"`
	Model string `json:"model"`
	Counts
}

// Report is the use of key (all keys when "") of model (all when ""),
// since start (window 0) or over the last window, rounded up to whole
// minutes. Rows are sorted by key, then model.
func (u *Usage) Report(key, model string, window time.Duration) []Row {
	u.mu.Lock()
	defer u.mu.Unlock()
	from := int64(0)
	if window > 0 {
		from = u.now().Unix()/60 - int64((window+time.Minute-1)/time.Minute) + 1
	}
	out := []Row{}
	for k, s := range u.by {
		if (key != "" && k.key != key) || (model != "" && k.model != model) {
			continue
		}
		r := Row{Key: k.key, Model: k.model}
		if window <= 0 {
			r.Counts = s.total
		} else {
			for _, m := range s.minutes {
				if m.at >= from {
					r.add(m.Counts)
				}
			}
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Key != out[j].Key {
			return out[i].Key < out[j].Key
		}
		return out[i].Model < out[j].Model
	})
	return out
}

// Since is when accounting started.
func (u *Usage) Since() time.Time { return u.start }
