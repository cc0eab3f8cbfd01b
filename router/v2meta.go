package router

import (
	"net/http"
	"sort"

	"github.com/llorch/llorch/models/catalog"
	"github.com/llorch/llorch/registry"
)

// APIVersion is the /v2 API's version.
const APIVersion = "2.0"

type engineView struct {
	ID            string          `json:"id"`
	Model         string          `json:"model"`
	Engine        string          `json:"engine"`
	EngineVersion string          `json:"engine_version"`
	PoolID        string          `json:"pool_id"`
	Address       string          `json:"address"`
	Slots         int             `json:"slots"`
	Ctx           int             `json:"ctx"`
	GPUs          []string        `json:"gpus"`
	VRAMMiB       int             `json:"vram_reserved_mib"`
	Health        registry.Health `json:"health"`
	Draining      bool            `json:"draining"`
	InFlight      int             `json:"in_flight"`
	EjectedMs     int64           `json:"ejected_ms"`
	// Live is the engine's own last load report (engineload.go); absent
	// when the router does not poll engines.
	Live *liveView `json:"live,omitempty"`
}

type nodeView struct {
	NodeID       string       `json:"node_id"`
	NodeName     string       `json:"node_name"`
	Address      string       `json:"address"`
	Healthy      bool         `json:"healthy"`
	GPUs         []string     `json:"gpus"`
	VRAMTotalMiB int          `json:"vram_total_mib"`
	Models       []string     `json:"models"`
	Engines      []engineView `json:"engines"`
}

// nodes groups the snapshot's instances by node. A node is healthy when
// one of its engines is passing (Consul only returns instances of live
// nodes, so a dead node drops out entirely).
func (rt *Router) nodes() []nodeView {
	snap := rt.view.Current()
	byNode := map[string]*nodeView{}
	var order []string
	for _, in := range snap.Instances {
		n, ok := byNode[in.NodeID]
		if !ok {
			n = &nodeView{NodeID: in.NodeID, NodeName: in.NodeName, Address: in.Address, GPUs: []string{}, Models: []string{}, Engines: []engineView{}}
			byNode[in.NodeID] = n
			order = append(order, in.NodeID)
			for _, e := range decodeModels(in.NodeModels) {
				n.Models = append(n.Models, e.Name)
			}
		}
		if in.Health == registry.HealthPassing || in.Health == "" {
			n.Healthy = true
		}
		for _, g := range in.GPUs {
			if !contains(n.GPUs, g) {
				n.GPUs = append(n.GPUs, g)
			}
		}
		n.VRAMTotalMiB = max(n.VRAMTotalMiB, in.VRAMTotalMiB)
		n.Engines = append(n.Engines, engineView{ID: in.ID, Model: in.Model, Engine: in.Engine, EngineVersion: in.EngineVersion,
			PoolID: in.PoolID, Address: in.URL(), Slots: in.Slots, Ctx: in.Ctx, GPUs: in.GPUs, VRAMMiB: in.VRAMReservedMiB,
			Health: in.Health, Draining: in.Draining, InFlight: rt.state.InFlight(in.ID), EjectedMs: rt.state.EjectedFor(in.ID).Milliseconds(),
			Live: rt.liveView(in.ID)})
	}
	sort.Strings(order)
	out := make([]nodeView, 0, len(order))
	for _, id := range order {
		out = append(out, *byNode[id])
	}
	return out
}

func decodeModels(s string) []catalog.Entry {
	e, _ := catalog.DecodeCompact(s)
	return e
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// serveNodes handles GET /v2/nodes.
func (rt *Router) serveNodes(w http.ResponseWriter, r *http.Request) {
	n := rt.nodes()
	body := map[string]any{"nodes": n, "count": len(n)}
	if p := rt.demandPools(); p != nil {
		body["pools"] = p // scaling / on-demand state per pool
	}
	writeJSON(w, http.StatusOK, body)
}

type modelAvailability struct {
	ModelID       string   `json:"model_id"`
	Nodes         []string `json:"nodes"`
	TotalNodes    int      `json:"total_nodes"`
	Replicas      int      `json:"replicas"`
	ReadyReplicas int      `json:"ready_replicas"`
	TotalCapacity int      `json:"total_capacity"`
}

// serveAvailability handles GET /v2/catalog/availability: every model that
// runs somewhere or is staged on a node (from the node catalogs the engines
// carry), with the nodes holding it, replicas and slot capacity.
func (rt *Router) serveAvailability(w http.ResponseWriter, r *http.Request) {
	snap := rt.view.Current()
	models := map[string]*modelAvailability{}
	get := func(m string) *modelAvailability {
		a, ok := models[m]
		if !ok {
			a = &modelAvailability{ModelID: m, Nodes: []string{}}
			models[m] = a
		}
		return a
	}
	addNode := func(a *modelAvailability, node string) {
		if !contains(a.Nodes, node) {
			a.Nodes = append(a.Nodes, node)
		}
	}
	for _, in := range snap.Instances {
		a := get(in.Model)
		a.Replicas++
		addNode(a, in.NodeID)
		if (in.Health == registry.HealthPassing || in.Health == "") && !in.Draining {
			a.ReadyReplicas++
			a.TotalCapacity += max(in.Slots, 1)
		}
		for _, e := range decodeModels(in.NodeModels) {
			addNode(get(e.Name), in.NodeID)
		}
	}
	out := make([]modelAvailability, 0, len(models))
	for _, a := range models {
		sort.Strings(a.Nodes)
		a.TotalNodes = len(a.Nodes)
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ModelID < out[j].ModelID })
	writeJSON(w, http.StatusOK, map[string]any{"models": out, "total_models": len(out)})
}

// serveCapabilities handles GET /v2/meta/capabilities: per engine and
// version, the largest context and slots on offer and the APIs served.
func (rt *Router) serveCapabilities(w http.ResponseWriter, r *http.Request) {
	type capability struct {
		Engine        string   `json:"engine"`
		EngineVersion string   `json:"engine_version"`
		CtxMax        int      `json:"ctx_max"`
		Slots         int      `json:"slots"`
		Features      []string `json:"features"`
		Models        []string `json:"models"`
	}
	caps := map[string]*capability{}
	for _, in := range rt.view.Current().Instances {
		key := in.Engine + "\x00" + in.EngineVersion
		c, ok := caps[key]
		if !ok {
			c = &capability{Engine: in.Engine, EngineVersion: in.EngineVersion, Features: []string{}, Models: []string{}}
			caps[key] = c
		}
		c.CtxMax = max(c.CtxMax, in.Ctx)
		c.Slots += in.Slots
		for _, a := range in.APIs {
			if !contains(c.Features, a) {
				c.Features = append(c.Features, a)
			}
		}
		if !contains(c.Models, in.Model) {
			c.Models = append(c.Models, in.Model)
		}
	}
	out := make([]capability, 0, len(caps))
	for _, c := range caps {
		sort.Strings(c.Features)
		sort.Strings(c.Models)
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Engine+out[i].EngineVersion < out[j].Engine+out[j].EngineVersion
	})
	writeJSON(w, http.StatusOK, map[string]any{"api_version": APIVersion, "engines": out,
		"features": []string{"sse", "cancel", "priorities", "admission:reject", "admission:drop-lru", "placement:pin", "placement:prefer", "placement:avoid", "session-affinity", "prefix-affinity"}})
}
