package driver

import (
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/nomadpb/structs"
)

func strAttr(s string) *structs.Attribute {
	return &structs.Attribute{Value: &structs.Attribute_StringVal{StringVal: s}}
}

func boolAttr(b bool) *structs.Attribute {
	return &structs.Attribute{Value: &structs.Attribute_BoolVal{BoolVal: b}}
}

// foundEngines lists the engines whose binary exists on this node.
func foundEngines(cfg PluginConfig) []string {
	var out []string
	for _, name := range engine.Names() {
		a, err := engine.Get(name)
		if err != nil {
			continue
		}
		bin := cfg.Engines[name]
		if bin == "" {
			bin = a.DefaultBinary()
		}
		if _, err := lookBinary(bin); err == nil {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// fingerprint builds one response. Attribute keys are copied verbatim into
// the node's attributes, hence the driver.llorch. prefix.
func (d *Driver) fingerprint() *drivers.FingerprintResponse {
	cfg := d.config()
	found := foundEngines(cfg)
	p := "driver." + PluginName + "."
	attrs := map[string]*structs.Attribute{
		p + "version":        strAttr(Version),
		p + "engines":        strAttr(strings.Join(found, ",")),
		p + "default_engine": strAttr(cfg.DefaultEngine),
		p + "gpu_sharing":    boolAttr(cfg.GPUSharing),
	}
	for k, v := range d.gpuAttributes() {
		attrs[k] = v
	}
	for k, v := range d.catalogAttributes() {
		attrs[k] = v
	}
	resp := &drivers.FingerprintResponse{Attributes: attrs, Health: drivers.FingerprintResponse_HEALTHY, HealthDescription: "healthy"}
	switch {
	case len(found) == 0:
		resp.Health = drivers.FingerprintResponse_UNHEALTHY
		resp.HealthDescription = "no engine binary found; set engines { llamacpp = \"/path/to/llama-server\" } in the plugin config"
	default:
		// gpu.go weighs require_gpu itself: a GPU that failed mid-way makes
		// the driver unhealthy even without it (hook for gpu.go).
		if ok, why := d.gpuHealth(); !ok {
			resp.Health = drivers.FingerprintResponse_UNHEALTHY
			resp.HealthDescription = why
		}
	}
	return resp
}

// Fingerprint sends a response at once, then whenever the config changes
// and every fingerprint_period; the stream stays open until the agent
// closes it or the plugin stops.
func (d *Driver) Fingerprint(_ *drivers.FingerprintRequest, stream drivers.Driver_FingerprintServer) error {
	ctx := stream.Context()
	var last *drivers.FingerprintResponse
	lastSent := time.Time{}
	for {
		changed := d.configChanged()
		fp := d.fingerprint()
		period := d.config().FingerprintPeriod
		if last == nil || !proto.Equal(fp, last) || time.Since(lastSent) >= period {
			if err := stream.Send(fp); err != nil {
				return err
			}
			last, lastSent = fp, time.Now()
		}
		t := time.NewTimer(period)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-d.ctx.Done():
			t.Stop()
			return nil
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// TaskEvents streams task events; it stays open until the agent closes it.
func (d *Driver) TaskEvents(_ *drivers.TaskEventsRequest, stream drivers.Driver_TaskEventsServer) error {
	ch, unsubscribe := d.events.subscribe()
	defer unsubscribe()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-d.ctx.Done():
			return nil
		case ev := <-ch:
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}
