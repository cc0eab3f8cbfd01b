package home

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/llorch/llorch/internal/procfs"
)

// fingerprint names an engine spec: the pool's settings after defaults,
// the program and the engine token (by hash: the state file must not hold
// it). The port is not part of it: an adopted engine keeps its port.
func fingerprint(p Pool, bin, engineToken string) string {
	b, _ := json.Marshal(struct {
		Pool
		Bin, Token string
	}{p, bin, fmt.Sprintf("%x", sha256.Sum256([]byte(engineToken)))})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// reconcile sorts the engines an earlier run left into adopted (alive,
// same pool and fingerprint, healthy) and stopped (all others).
func (h *Home) reconcile() {
	left := h.state.take()
	byName := map[string]*poolPlan{}
	for i := range h.pools {
		byName[h.pools[i].Name] = &h.pools[i]
	}
	for _, e := range left {
		if !procfs.Alive(e.PID, e.Start) {
			continue
		}
		log := h.log.With("pool", e.Pool, "pid", e.PID)
		p := byName[e.Pool]
		why := ""
		switch {
		case p == nil:
			why = "its pool is not in the config"
		case p.adopt != nil:
			why = "the pool already has an engine"
		case e.Spec != p.fp:
			why = "its spec differs from the config"
		default:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := p.ad.Ready(ctx, &http.Client{}, "http://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(e.Port)), h.spec(p, e.Port))
			cancel()
			if err != nil {
				why = "it fails its health check: " + err.Error()
			}
		}
		if why == "" {
			e := e
			p.adopt = &e
			h.state.keep(e)
			log.Info("adopting the engine an earlier run left behind", "port", e.Port)
			continue
		}
		log.Warn("stopping an engine an earlier run left behind", "reason", why)
		stopLeftover(e)
	}
	_ = h.state.save()
}

// stopLeftover stops an engine that is not our child: its group gets
// SIGTERM, then SIGKILL after stopGrace.
func stopLeftover(e stateEntry) {
	_ = syscall.Kill(-e.PID, syscall.SIGTERM)
	deadline := time.Now().Add(stopGrace)
	for procfs.Alive(e.PID, e.Start) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if procfs.Alive(e.PID, e.Start) {
		_ = syscall.Kill(-e.PID, syscall.SIGKILL)
	}
}
