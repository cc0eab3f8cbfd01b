// Decoding and validating the plugin config (SetConfig) and a task's
// config (StartTask).

package driver

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/zclconf/go-cty/cty"

	"github.com/llorch/llorch/driver/users"
)

// DecodePluginConfig decodes and validates SetConfig's msgpack_config.
func DecodePluginConfig(data []byte) (PluginConfig, error) {
	vals, err := unmarshalConfig(data, PluginConfigSpec())
	if err != nil {
		return PluginConfig{}, fmt.Errorf("plugin config: %w", err)
	}
	d := defaultPluginConfig()
	f := &fields{vals: vals}
	c := f.object("consul")
	cfg := PluginConfig{
		Consul: ConsulConfig{
			Address:     c.str("address", ""),
			TokenFile:   c.str("token_file", ""),
			CAFile:      c.str("ca_file", ""),
			CertFile:    c.str("cert_file", ""),
			KeyFile:     c.str("key_file", ""),
			ServiceName: c.str("service_name", d.Consul.ServiceName),
		},
		Engines:          f.strMap("engines"),
		DefaultEngine:    f.str("default_engine", d.DefaultEngine),
		RequireGPU:       f.boolean("require_gpu", d.RequireGPU),
		GPUSharing:       f.boolean("gpu_sharing", d.GPUSharing),
		VRAMHeadroomMiB:  f.integer("vram_headroom_mib", d.VRAMHeadroomMiB, 0, 1<<20),
		ModelDir:         f.str("model_dir", ""),
		EngineTokenFile:  f.str("engine_token_file", ""),
		AdvertiseAddress: f.str("advertise_address", ""),
		NodeID:           f.str("node_id", ""),
		MetricsAddress:   f.str("metrics_address", ""),
		DefaultUser:      f.str("default_user", ""),

		AllowedUnsafeOptions:       f.strList("allowed_unsafe_options"),
		AllowModelsOutsideModelDir: f.boolean("allow_models_outside_model_dir", false),
	}
	period := f.str("fingerprint_period", d.FingerprintPeriod.String())
	if c.err != nil {
		return PluginConfig{}, fmt.Errorf("plugin config: %w", c.err)
	}
	if f.err != nil {
		return PluginConfig{}, fmt.Errorf("plugin config: %w", f.err)
	}
	for _, r := range []struct {
		field string
		into  *users.Ranges
	}{{"denied_host_uids", &cfg.DeniedHostUIDs}, {"denied_host_gids", &cfg.DeniedHostGIDs}} {
		ranges, err := users.ParseRanges(f.str(r.field, ""))
		if err != nil {
			return PluginConfig{}, fmt.Errorf("plugin config: field %q: %v (want ids and ranges like \"0-999,65534\")", r.field, err)
		}
		*r.into = ranges
	}
	if f.err != nil {
		return PluginConfig{}, fmt.Errorf("plugin config: %w", f.err)
	}
	p, err := time.ParseDuration(period)
	if err != nil || p <= 0 {
		return PluginConfig{}, fmt.Errorf("plugin config: field %q: %q is not a positive duration like \"30s\"", "fingerprint_period", period)
	}
	cfg.FingerprintPeriod = p
	if cfg.Consul.ServiceName == "" {
		cfg.Consul.ServiceName = d.Consul.ServiceName
	}
	if cfg.ModelDir != "" && !filepath.IsAbs(cfg.ModelDir) {
		return PluginConfig{}, fmt.Errorf("plugin config: field %q: %q must be an absolute path", "model_dir", cfg.ModelDir)
	}
	return cfg, nil
}

// DecodeTaskConfig decodes and validates StartTask's msgpack_driver_config.
func DecodeTaskConfig(data []byte) (TaskConfig, error) {
	vals, err := unmarshalConfig(data, TaskConfigSpec())
	if err != nil {
		return TaskConfig{}, fmt.Errorf("task config: %w", err)
	}
	f := &fields{vals: vals}
	const maxInt = 1 << 30
	cfg := TaskConfig{
		Engine:          f.str("engine", ""),
		Model:           f.str("model", ""),
		ModelName:       f.str("model_name", ""),
		Port:            f.str("port", ""),
		Ctx:             f.integer("ctx", 0, 0, maxInt),
		Slots:           f.integer("slots", 0, 0, 4096),
		GPULayers:       f.integer("gpu_layers", 0, -1, 100000),
		Threads:         f.integer("threads", 0, 0, 4096),
		VRAMMiB:         f.integer("vram_mib", 0, 0, maxInt),
		ExtraArgs:       f.strList("extra_args"),
		Env:             f.strMap("env"),
		Pool:            f.str("pool", ""),
		TLSCertFile:     f.str("tls_cert_file", ""),
		TLSKeyFile:      f.str("tls_key_file", ""),
		TLSClientCAFile: f.str("tls_client_ca_file", ""),
	}
	s := f.object("service")
	cfg.Service = ServiceConfig{Name: s.str("name", ""), Tags: s.strList("tags")}
	if gv, ok := f.get("gpus"); ok {
		switch {
		case gv.Type() == cty.Number:
			n, err := ctyInt(gv)
			if err != nil || n < 0 || n > 1024 {
				f.fail("gpus", "a GPU count must be a whole number between 0 and 1024, got %s", gv.AsBigFloat().Text('g', -1))
			}
			cfg.GPUCount = int(n)
		case gv.Type().IsTupleType() || gv.Type().IsListType():
			cfg.GPUIDs = f.strList("gpus")
			for i, id := range cfg.GPUIDs {
				if strings.TrimSpace(id) == "" {
					f.fail(fmt.Sprintf("gpus[%d]", i), "a GPU UUID must not be empty")
				}
			}
		default:
			f.fail("gpus", "must be a number (GPU count) or a list of GPU UUID strings, got %s", gv.Type().FriendlyName())
		}
	}
	if f.err == nil && s.err != nil {
		f.err = s.err
	}
	if f.err != nil {
		return TaskConfig{}, fmt.Errorf("task config: %w", f.err)
	}
	if strings.TrimSpace(cfg.Model) == "" {
		return TaskConfig{}, fmt.Errorf("task config: field %q: required (path of the model file)", "model")
	}
	for k := range cfg.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return TaskConfig{}, fmt.Errorf("task config: field %q: %q is not a valid environment variable name", "env", k)
		}
	}
	return cfg, nil
}
