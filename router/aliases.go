package router

// Model aliases and fallbacks (router config): an alias is another name
// for a served model (gpt-4o-mini=llama-3.1-8b); a fallback is a model
// that answers when the requested one has no instance, none able to take
// requests, or a full admission queue. Responses say which model answered
// (ModelHeader) and, after a fallback, which one was asked for
// (FallbackHeader).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/admission"
	"github.com/llorch/llorch/scheduler"
)

const (
	// ModelHeader names the model that answered, when it is not the one
	// the request named (an alias or a fallback).
	ModelHeader = "X-Llorch-Model"
	// FallbackHeader names the model a fallback stood in for.
	FallbackHeader = "X-Llorch-Fallback-From"
)

// modelRoutes is the parsed alias and fallback configuration.
type modelRoutes struct {
	aliases   map[string]string
	fallbacks map[string][]string
}

// parseAliases reads "alias=model,alias=model".
func parseAliases(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, ent := range splitEntries(s) {
		k, v, ok := strings.Cut(ent, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("model-aliases: %q is not alias=model", ent)
		}
		if k == v {
			return nil, fmt.Errorf("model-aliases: %q names itself", k)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("model-aliases: %q is given twice", k)
		}
		out[k] = v
	}
	for k, v := range out {
		if _, chained := out[v]; chained {
			return nil, fmt.Errorf("model-aliases: %q points at %q, itself an alias (point at the model)", k, v)
		}
	}
	return out, nil
}

// parseFallbacks reads "model=fallback|fallback,model=fallback".
func parseFallbacks(s string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, ent := range splitEntries(s) {
		k, v, ok := strings.Cut(ent, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.TrimSpace(v) == "" {
			return nil, fmt.Errorf("model-fallbacks: %q is not model=fallback[|fallback...]", ent)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("model-fallbacks: %q is given twice", k)
		}
		for _, f := range strings.Split(v, "|") {
			f = strings.TrimSpace(f)
			if f == "" || f == k {
				return nil, fmt.Errorf("model-fallbacks: %q has an empty or self fallback", k)
			}
			out[k] = append(out[k], f)
		}
	}
	return out, nil
}

func splitEntries(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// FormatModelRoutes writes alias and fallback maps (a YAML config's form)
// as the model-aliases and model-fallbacks option values, sorted, and
// checks them as the router will.
func FormatModelRoutes(aliases map[string]string, fallbacks map[string][]string) (string, string, error) {
	var a, f []string
	for k, v := range aliases {
		a = append(a, k+"="+v)
	}
	for k, v := range fallbacks {
		f = append(f, k+"="+strings.Join(v, "|"))
	}
	sort.Strings(a)
	sort.Strings(f)
	as, fs := strings.Join(a, ","), strings.Join(f, ",")
	for _, s := range slicesOf(aliases, fallbacks) {
		if strings.ContainsAny(s, ",|=") {
			return "", "", fmt.Errorf("model names may not contain ',', '|' or '=': %q", s)
		}
	}
	if _, err := newModelRoutes(as, fs); err != nil {
		return "", "", err
	}
	return as, fs, nil
}

// slicesOf lists every model name in the maps.
func slicesOf(aliases map[string]string, fallbacks map[string][]string) []string {
	var out []string
	for k, v := range aliases {
		out = append(out, k, v)
	}
	for k, v := range fallbacks {
		out = append(out, k)
		out = append(out, v...)
	}
	return out
}

func newModelRoutes(aliases, fallbacks string) (modelRoutes, error) {
	a, err := parseAliases(aliases)
	if err != nil {
		return modelRoutes{}, err
	}
	f, err := parseFallbacks(fallbacks)
	if err != nil {
		return modelRoutes{}, err
	}
	return modelRoutes{aliases: a, fallbacks: f}, nil
}

// resolve is the model an alias stands for (the name itself otherwise).
func (m modelRoutes) resolve(name string) string {
	if t, ok := m.aliases[name]; ok {
		return t
	}
	return name
}

// fallbackWorthy: the model has no instance, none that can take a request
// now, or its queue is full. A timeout or a bad request is not: another
// model would not make the answer right.
func fallbackWorthy(err error) bool {
	var nc *NoCapacityError
	var se *scheduler.Error
	var ae *admission.Error
	switch {
	case errors.Is(err, ErrModelNotAvailable), errors.As(err, &nc):
		return true
	case errors.As(err, &se):
		return se.Code == scheduler.CodeModelNotAvailable || se.Code == scheduler.CodePoolUnavailable
	case errors.As(err, &ae):
		return ae.Code == admission.CodeAdmissionReject || ae.Code == admission.CodeQueueFullDrop
	}
	return false
}

// withModel is body with "model" replaced (engines check the name they
// serve, so an alias or a fallback must reach them as the real name).
func withModel(body []byte, model string) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, err
	}
	b, _ := json.Marshal(model)
	m["model"] = b
	return json.Marshal(m)
}

// placeRouted is placeAdmitted through aliases and fallbacks: it may
// change pr.Model and *body to the model that will answer, and then says
// so in the response headers.
func (rt *Router) placeRouted(ctx context.Context, w http.ResponseWriter, pr *PlaceRequest, body *[]byte, prio admission.Priority, deadline time.Time) ([]registry.Instance, error) {
	if t := rt.routes.resolve(pr.Model); t != pr.Model {
		nb, err := withModel(*body, t)
		if err != nil {
			return nil, err
		}
		*body, pr.Model = nb, t
		w.Header().Set(ModelHeader, t)
	}
	cands, err := rt.placeAdmitted(ctx, *pr, prio, deadline)
	if err == nil || !fallbackWorthy(err) || ctx.Err() != nil {
		return cands, err
	}
	for _, fb := range rt.routes.fallbacks[pr.Model] {
		alt := *pr
		alt.Model = rt.routes.resolve(fb)
		if k := keyOf(ctx); k != nil && !k.Allows(alt.Model) {
			continue // a fallback never widens what a key may use
		}
		c, ferr := rt.placeAdmitted(ctx, alt, prio, deadline)
		if ferr != nil {
			if ctx.Err() != nil {
				return nil, ferr
			}
			continue
		}
		nb, werr := withModel(*body, alt.Model)
		if werr != nil {
			return nil, werr
		}
		rt.log.Debug("fallback model answers", "model", pr.Model, "fallback", alt.Model, "reason", err.Error())
		w.Header().Set(FallbackHeader, pr.Model)
		w.Header().Set(ModelHeader, alt.Model)
		*body, *pr = nb, alt
		return c, nil
	}
	return cands, err
}

// listedModels is what /v1/models lists: the available models and the
// aliases whose model is available, sorted.
func (rt *Router) listedModels() []string {
	avail := availableModels(rt.view.Current())
	have := map[string]bool{}
	for _, m := range avail {
		have[m] = true
	}
	out := avail
	for a, t := range rt.routes.aliases {
		if have[t] && !have[a] {
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out
}
