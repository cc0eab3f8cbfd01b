package router

import (
	"net"
	"net/http"
	"strconv"
)

// servePrometheusSD handles GET /v2/sd/prometheus: Prometheus HTTP service
// discovery (http_sd_configs) of the engines in the router's view, each
// with node_id, pool_id, model and engine labels. It serves Prometheus
// builds without Consul SD (Debian's, for one) the same targets and labels
// consul_sd_configs would find.
func (rt *Router) servePrometheusSD(w http.ResponseWriter, r *http.Request) {
	type group struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	out := []group{}
	for _, in := range rt.view.Current().Instances {
		out = append(out, group{
			Targets: []string{net.JoinHostPort(in.Address, strconv.Itoa(in.Port))},
			Labels: map[string]string{"node_id": in.NodeID, "pool_id": in.PoolID, "model": in.Model,
				"engine": in.Engine, "instance_id": in.ID},
		})
	}
	writeJSON(w, http.StatusOK, out)
}
