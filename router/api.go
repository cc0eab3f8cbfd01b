package router

import (
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/llorch/llorch/internal/apierr"
	"github.com/llorch/llorch/registry"
)

type healthBody struct {
	Status        string `json:"status"` // ok, degraded (snapshot old), starting (no snapshot yet)
	SnapshotAgeMs int64  `json:"snapshot_age_ms"`
	Instances     int    `json:"instances"`
	Synced        bool   `json:"synced"` // a first snapshot has arrived
}

// notSyncedRetry is the retry hint before the first snapshot: discovery's
// first blocking query returns at once, so it is short.
const notSyncedRetry = time.Second

// notSynced is the answer to a request that needs placement before the
// first snapshot: not "no such model" (the router does not know yet) but
// retriable 503.
func (rt *Router) notSynced() *apierr.Error {
	if rt.view.Synced() {
		return nil
	}
	return &apierr.Error{Status: http.StatusServiceUnavailable, Code: CodeNotSynced, Retriable: true, RetryAfter: notSyncedRetry,
		Message: "the router has not received the instance list from the registry yet"}
}

// serveHealth answers 200 while the router can serve, with "degraded" when
// the registry has not been heard from for cfg.DegradedAfter: the router
// still routes on its last snapshot then. 503 only before the first one.
func (rt *Router) serveHealth(w http.ResponseWriter, r *http.Request) {
	age := rt.view.Age()
	b := healthBody{Status: "ok", SnapshotAgeMs: age.Milliseconds(), Instances: len(rt.view.Current().Instances), Synced: rt.view.Synced()}
	status := http.StatusOK
	switch {
	case age < 0 || !b.Synced:
		b.Status, b.SnapshotAgeMs, status = "starting", -1, http.StatusServiceUnavailable
		w.Header().Set("Retry-After", apierr.RetryAfterSeconds(notSyncedRetry))
	case age > rt.cfg.DegradedAfter:
		b.Status = "degraded"
	}
	writeJSON(w, status, b)
}

type modelObject struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
	// State is set when the router scales or loads models on demand:
	// loaded, loading or stopped.
	State string `json:"state,omitempty"`
}

type modelList struct {
	Object string        `json:"object"`
	Data   []modelObject `json:"data"`
}

// availableModels lists the models that have at least one instance able to
// take requests (passing, not draining), sorted by name.
func availableModels(snap *registry.Snapshot) []string {
	seen := map[string]bool{}
	var out []string
	for _, in := range snap.Instances {
		if in.Draining || (in.Health != "" && in.Health != registry.HealthPassing) || seen[in.Model] {
			continue
		}
		seen[in.Model] = true
		out = append(out, in.Model)
	}
	sort.Strings(out)
	return out
}

func (rt *Router) serveModels(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		apierr.Write(w, &apierr.Error{Status: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed, Message: "use GET on /v1/models"})
		return
	}
	list := modelList{Object: "list", Data: []modelObject{}}
	if rt.demand != nil {
		list.Data = rt.demandModels(availableModels(rt.view.Current()))
	}
	for _, m := range availableModels(rt.view.Current()) {
		if rt.demand == nil {
			list.Data = append(list.Data, modelObject{ID: m, Object: "model", OwnedBy: "llorch"})
		}
	}
	writeJSON(w, http.StatusOK, list)
}

func (rt *Router) serveModel(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		apierr.Write(w, &apierr.Error{Status: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed, Message: "use GET on /v1/models/{model}"})
		return
	}
	name := r.PathValue("model")
	for _, m := range availableModels(rt.view.Current()) {
		if m == name {
			infoFrom(r.Context()).model = m
			writeJSON(w, http.StatusOK, modelObject{ID: m, Object: "model", OwnedBy: "llorch"})
			return
		}
	}
	apierr.Write(w, &apierr.Error{Status: http.StatusNotFound, Code: CodeModelNotAvailable, Param: "model",
		Message: "model " + strconv.Quote(name) + " is not available on any healthy instance"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		apierr.Write(w, &apierr.Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "encoding the response failed"})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
