// Plugin info, schemas, SetConfig and the fingerprint stream.

package driver_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/hclspecdec"
	"github.com/llorch/llorch/internal/nomadpb/base"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/nomadpb/hclspec"
)

func TestPluginInfoSchemaAndConfig(t *testing.T) {
	p := nomadclient.Launch(t, nomadclient.Binary(t))
	info, err := p.Base.PluginInfo(ctxT(t, 5*time.Second), &base.PluginInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetType() != base.PluginType_DRIVER || info.GetName() != "llorch" {
		t.Fatalf("PluginInfo: %v", info)
	}
	if len(info.GetPluginApiVersions()) != 1 || info.GetPluginApiVersions()[0] != "v0.1.0" {
		t.Fatalf("api versions %v, want [v0.1.0]", info.GetPluginApiVersions())
	}
	// The agent parses it with hashicorp/go-version (semver-like).
	if !regexp.MustCompile(`^v?[0-9]+(\.[0-9]+)*(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`).MatchString(info.GetPluginVersion()) {
		t.Fatalf("plugin version %q is not a go-version", info.GetPluginVersion())
	}
	ps, ts := schema(t, p)
	for name, s := range map[string]*hclspec.Spec{"plugin": ps, "task": ts} {
		if _, err := hclspecdec.Convert(s); err != nil {
			t.Fatalf("%s schema does not convert as the agent converts it: %v", name, err)
		}
	}

	// The agent's validation launch sends SetConfig with no driver ports;
	// an empty config takes the defaults.
	for i := 0; i < 2; i++ {
		b, err := nomadclient.EncodeConfig(ps, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Base.SetConfig(ctxT(t, 5*time.Second), &base.SetConfigRequest{MsgpackConfig: b, PluginApiVersion: "v0.1.0"}); err != nil {
			t.Fatalf("SetConfig #%d: %v", i+1, err)
		}
	}

	caps, err := p.Driver.Capabilities(ctxT(t, 5*time.Second), &drivers.CapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	c := caps.GetCapabilities()
	if !c.GetSendSignals() || !c.GetExec() || c.GetFsIsolation() != drivers.DriverCapabilities_NONE ||
		len(c.GetNetworkIsolationModes()) != 1 || c.GetNetworkIsolationModes()[0] != drivers.NetworkIsolationSpec_HOST {
		t.Fatalf("capabilities: %v", c)
	}

	bad := []struct {
		name  string
		cfg   map[string]interface{}
		field string
	}{
		{"unknown engine", map[string]interface{}{"engines": map[string]interface{}{"nosuch": "/bin/true"}}, "engines.nosuch"},
		{"bad duration", map[string]interface{}{"fingerprint_period": "soon"}, "fingerprint_period"},
		{"wrong type", map[string]interface{}{"require_gpu": "maybe"}, "require_gpu"},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			enc, err := nomadclient.EncodeConfig(ps, b.cfg)
			if err != nil {
				// hcldec refused it as the agent would; it must name the field.
				if !strings.Contains(err.Error(), b.field) {
					t.Fatalf("agent-side error does not name %q: %v", b.field, err)
				}
				return
			}
			_, err = p.Base.SetConfig(ctxT(t, 5*time.Second), &base.SetConfigRequest{MsgpackConfig: enc})
			if err == nil || !strings.Contains(err.Error(), b.field) {
				t.Fatalf("SetConfig error %v does not name %q", err, b.field)
			}
		})
	}
}

func TestFingerprintStream(t *testing.T) {
	p := launch(t)
	ctx, cancel := context.WithCancel(ctxT(t, 10*time.Second))
	defer cancel()
	stream, err := p.Driver.Fingerprint(ctx, &drivers.FingerprintRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	fp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("first fingerprint took %s", d)
	}
	if fp.GetHealth() != drivers.FingerprintResponse_HEALTHY {
		t.Fatalf("health %v: %s", fp.GetHealth(), fp.GetHealthDescription())
	}
	attrs := fp.GetAttributes()
	if attrs["driver.llorch.version"].GetStringVal() == "" || !strings.Contains(attrs["driver.llorch.engines"].GetStringVal(), "llamacpp") {
		t.Fatalf("attributes: %v", attrs)
	}
	// The stream stays open and repeats every fingerprint_period (1s here).
	fp2, err := stream.Recv()
	if err != nil {
		t.Fatalf("second fingerprint: %v", err)
	}
	if fp2.GetHealth() != drivers.FingerprintResponse_HEALTHY {
		t.Fatalf("second fingerprint health %v", fp2.GetHealth())
	}

	// require_gpu on a node without GPUs: unhealthy, with the reason.
	setConfig(t, p, pluginConfig(t, map[string]interface{}{"require_gpu": true}))
	eventually(t, 5*time.Second, "unhealthy fingerprint", func() bool {
		fp, err := stream.Recv()
		return err == nil && fp.GetHealth() == drivers.FingerprintResponse_UNHEALTHY && strings.Contains(fp.GetHealthDescription(), "GPU")
	})
}
