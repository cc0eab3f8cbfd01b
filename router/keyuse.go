package router

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/internal/apierr"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/admission"
	"github.com/llorch/llorch/router/engineclient"
	"github.com/llorch/llorch/router/keys"
)

// This file joins the per-team keys (router/keys) to the request path: the
// gate's set-up and background work, the checks before placement, the
// usage read from the answer, and GET /v2/usage.

// newKeyGate builds the key gate when keys are configured (nil otherwise:
// single-token mode, unchanged).
func newKeyGate(cfg Config, rt *Router) (*keys.Gate, error) {
	if cfg.KeysFile == "" && cfg.KeysConsulPrefix == "" {
		return nil, nil
	}
	st := keys.NewStore()
	if cfg.KeysFile != "" {
		set, err := st.LoadFile(cfg.KeysFile)
		if err != nil {
			return nil, err
		}
		rt.log.Info("keys loaded", "source", cfg.KeysFile, "keys", set.Len())
	}
	if cfg.KeysConsulPrefix != "" {
		if cfg.Consul == nil {
			return nil, fmt.Errorf("keys-consul-prefix %q needs a Consul client", cfg.KeysConsulPrefix)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		idx, err := st.LoadConsul(ctx, cfg.Consul.KV(), cfg.KeysConsulPrefix)
		cancel()
		if err != nil {
			// Like discovery, the router starts without Consul and catches
			// up: the watch loads the keys once Consul answers.
			rt.log.Warn("keys from Consul not loaded yet; following the prefix", "prefix", cfg.KeysConsulPrefix, "error", err)
		} else {
			rt.keysIndex = idx
			rt.log.Info("keys loaded", "source", "consul:"+cfg.KeysConsulPrefix, "keys", st.Current().Len())
		}
	}
	u, err := keys.NewUsage(rt.promReg)
	if err != nil {
		return nil, err
	}
	return keys.NewGate(st, keys.NewLimits(cfg.KeyWindow), u), nil
}

// runKeys owns the gate's background work until ctx ends: reloads and the
// count of live routers.
func (rt *Router) runKeys(ctx context.Context, spawn func(func())) {
	g := rt.keys
	if g == nil {
		return
	}
	if f := rt.cfg.KeysFile; f != "" {
		spawn(func() { g.Store.WatchFile(ctx, f, rt.log) })
	}
	if c := rt.cfg.Consul; c != nil {
		if p := rt.cfg.KeysConsulPrefix; p != "" {
			spawn(func() { g.Store.WatchConsul(ctx, c.KV(), p, rt.keysIndex, rt.log) })
		}
		spawn(func() { keys.WatchPeers(ctx, c.Health(), rt.cfg.RouterService, g.Limits.SetRouters, rt.log) })
	}
}

// keyUse is one request's dealings with its key.
type keyUse struct {
	g      *keys.Gate
	key    *keys.Key
	adm    *keys.Admission
	model  string
	meter  keys.Meter
	status int  // the engine's status, once it answered
	broken bool // the answer broke off
	placed bool // placement found an instance (the model is a real one)
}

// admitKey applies the request's key, if any, before placement: the model
// allow-list, the key's priority class and its limits. ok false: the
// refusal was written.
func (rt *Router) admitKey(w http.ResponseWriter, r *http.Request, model string, prio *admission.Priority) (*keyUse, bool) {
	if rt.keys == nil {
		return nil, true
	}
	k := keyOf(r.Context())
	if k == nil {
		return nil, true // the single API token or a loopback dev request
	}
	adm, e := rt.keys.Admit(k, model)
	if e != nil {
		infoFrom(r.Context()).logger().Info("key refused", "identity", k.Identity(), "code", e.Code, "message", e.Message)
		apierr.Write(w, e)
		return nil, false
	}
	if k.Class() == admission.Batch {
		*prio = admission.Batch
	}
	return &keyUse{g: rt.keys, key: k, adm: adm, model: model}, true
}

// upstreamBody asks a streaming engine for usage.
func (ku *keyUse) upstreamBody(body []byte, stream bool) []byte {
	if ku == nil || !stream {
		return body
	}
	out, asked := keys.AskUsage(body)
	ku.meter.Hide = !asked
	return out
}

// sink meters the answer on its way to s: the engine's status, its usage,
// and whether it broke off; the usage-only chunk the client did not ask
// for is dropped.
func (ku *keyUse) sink(s sink) sink {
	if ku == nil {
		return s
	}
	return &keySink{sink: s, ku: ku}
}

type keySink struct {
	sink
	ku *keyUse
}

func (k *keySink) commit(resp *engineclient.Response, sse bool) error {
	k.ku.status = resp.StatusCode
	return k.sink.commit(resp, sse)
}

func (k *keySink) event(ev []byte, more bool) error {
	if k.ku.meter.Event(ev) {
		return k.sink.event(nil, more) // keeps the flush the relay asked for
	}
	return k.sink.event(ev, more)
}

func (k *keySink) chunk(p []byte) error {
	k.ku.meter.Chunk(p)
	return k.sink.chunk(p)
}

func (k *keySink) broken(inst registry.Instance, reason string, sse bool) outcomeKind {
	k.ku.broken = true
	return k.sink.broken(inst, reason, sse)
}

func (ku *keyUse) wasPlaced() {
	if ku != nil {
		ku.placed = true
	}
}

// end settles the request: one no engine answered costs nothing (its
// request is taken back); one answered is charged the tokens the engine
// reported and counted in the key's usage.
func (ku *keyUse) end(clientGone bool) {
	if ku == nil {
		return
	}
	if ku.status == 0 {
		ku.adm.Refund()
		if ku.placed && !clientGone {
			ku.g.Usage.Record(ku.key.Name, ku.model, keys.Counts{Errors: 1})
		}
		return
	}
	p, c, _ := ku.meter.Usage()
	ku.adm.Charge(p + c)
	cnt := keys.Counts{Requests: 1, PromptTokens: p, CompletionTokens: c}
	if ku.status >= 400 || ku.broken {
		cnt.Errors = 1
	}
	ku.g.Usage.Record(ku.key.Name, ku.model, cnt)
}

// withIdentity copies the authenticated identity into the request's info
// for the access log (which runs outside the auth gate).
// serveUsage handles GET /v2/usage: per key and model, since the router
// started or over ?window= (a duration, up to 24h). A request made with a
// key sees that key's usage only; the operator's API token sees every key
// and may pick one with ?key=.
func (rt *Router) serveUsage(w http.ResponseWriter, r *http.Request) {
	if rt.keys == nil {
		apierr.Write(w, apierr.New(http.StatusNotFound, CodeNotFound, "no API keys are configured (keys-file, keys-consul-prefix), so there is no per-key usage"))
		return
	}
	q := r.URL.Query()
	name, model := q.Get("key"), q.Get("model")
	if k := keyOf(r.Context()); k != nil {
		if name != "" && name != k.Name {
			apierr.Write(w, &apierr.Error{Status: http.StatusForbidden, Code: CodeUsageNotAllowed, Param: "key",
				Message: fmt.Sprintf("API key %q may read only its own usage", k.Name)})
			return
		}
		name = k.Name
	}
	var window time.Duration
	if v := q.Get("window"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > keys.MaxWindow {
			apierr.Write(w, &apierr.Error{Status: http.StatusBadRequest, Code: CodeInvalidParams, Param: "window",
				Message: fmt.Sprintf("window %q: want a duration from 1m to %s, such as 15m or 24h", v, keys.MaxWindow)})
			return
		}
		window = d
	}
	rows := rt.keys.Usage.Report(name, model, window)
	out := map[string]any{"since": rt.keys.Usage.Since().UTC().Format(time.RFC3339), "usage": rows,
		"routers": rt.keys.Limits.Routers(), "note": "this router's own counts; sum over routers for the fleet"}
	if window > 0 {
		out["window"] = window.String()
		out["since"] = time.Now().Add(-window).UTC().Format(time.RFC3339)
	}
	writeJSON(w, http.StatusOK, out)
}

// CodeUsageNotAllowed: a key asked for another key's usage (403).
const CodeUsageNotAllowed = "USAGE_NOT_ALLOWED"

// keyChecker is the gate as authmin's KeyChecker (a nil interface, not a
// nil pointer, when keys are off).
func (rt *Router) keyChecker() authmin.KeyChecker {
	if rt.keys == nil {
		return nil
	}
	return rt.keys
}
