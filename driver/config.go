package driver

import (
	"bytes"
	"fmt"
	"math/big"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/vmihailenco/msgpack/v5"
	"github.com/zclconf/go-cty/cty"
	ctymsgpack "github.com/zclconf/go-cty/cty/msgpack"

	"github.com/llorch/llorch/internal/hclspecdec"
	"github.com/llorch/llorch/internal/nomadpb/hclspec"
	"github.com/llorch/llorch/registry"
)

// Defaults of the plugin config; the schema below states the same values as
// HCL literals so the agent fills them in (a test checks both agree).
const (
	defaultEngine            = "llamacpp"
	defaultFingerprintPeriod = 30 * time.Second
	defaultVRAMHeadroomMiB   = 512
)

// ConsulConfig is the plugin config's consul block.
type ConsulConfig struct {
	Address     string `json:"address,omitempty"`
	TokenFile   string `json:"token_file,omitempty"`
	ServiceName string `json:"service_name,omitempty"`
}

// PluginConfig is `plugin "llorch" { config { ... } }` on a client.
type PluginConfig struct {
	Consul            ConsulConfig      `json:"consul"`
	Engines           map[string]string `json:"engines,omitempty"` // engine name → binary path
	DefaultEngine     string            `json:"default_engine"`
	FingerprintPeriod time.Duration     `json:"fingerprint_period"`
	RequireGPU        bool              `json:"require_gpu"`
	GPUSharing        bool              `json:"gpu_sharing"`
	VRAMHeadroomMiB   int               `json:"vram_headroom_mib"`
	ModelDir          string            `json:"model_dir,omitempty"`
	EngineTokenFile   string            `json:"engine_token_file,omitempty"`
	AdvertiseAddress  string            `json:"advertise_address,omitempty"`
	NodeID            string            `json:"node_id,omitempty"`
	MetricsAddress    string            `json:"metrics_address,omitempty"`
}

// defaultPluginConfig is what a client with no config block runs with.
func defaultPluginConfig() PluginConfig {
	return PluginConfig{
		Consul:            ConsulConfig{ServiceName: registry.DefaultServiceName},
		DefaultEngine:     defaultEngine,
		FingerprintPeriod: defaultFingerprintPeriod,
		GPUSharing:        true,
		VRAMHeadroomMiB:   defaultVRAMHeadroomMiB,
	}
}

// ServiceConfig is the task config's service block.
type ServiceConfig struct {
	Name string   `json:"name,omitempty"`
	Tags []string `json:"tags,omitempty"`
}

// TaskConfig is a job's `config { ... }` for a llorch task.
type TaskConfig struct {
	Engine    string `json:"engine,omitempty"`
	Model     string `json:"model"`
	ModelName string `json:"model_name,omitempty"`
	// Port is a port label of the group's network block ("http") or a
	// number ("8080").
	Port      string `json:"port,omitempty"`
	Ctx       int    `json:"ctx,omitempty"`
	Slots     int    `json:"slots,omitempty"`
	GPULayers int    `json:"gpu_layers,omitempty"`
	Threads   int    `json:"threads,omitempty"`
	// gpus is either a count or a list of GPU UUIDs.
	GPUCount  int               `json:"gpu_count,omitempty"`
	GPUIDs    []string          `json:"gpu_ids,omitempty"`
	VRAMMiB   int               `json:"vram_mib,omitempty"`
	ExtraArgs []string          `json:"extra_args,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	Pool      string            `json:"pool,omitempty"`
	Service   ServiceConfig     `json:"service"`
}

// WantsGPUs reports whether the task asked for any GPU.
func (c TaskConfig) WantsGPUs() bool { return c.GPUCount > 0 || len(c.GPUIDs) > 0 }

// Schema helpers: the protocol's Spec tree is verbose; these keep the two
// schemas readable.
func sObject(attrs map[string]*hclspec.Spec) *hclspec.Spec {
	return &hclspec.Spec{Block: &hclspec.Spec_Object{Object: &hclspec.Object{Attributes: attrs}}}
}

func sAttr(typ string, required bool) *hclspec.Spec {
	return &hclspec.Spec{Block: &hclspec.Spec_Attr{Attr: &hclspec.Attr{Type: typ, Required: required}}}
}

// sDefault is an attribute with a default; a Default's children get no
// implied name from the enclosing Object, so the name is spelled out.
func sDefault(name, typ, literal string) *hclspec.Spec {
	return &hclspec.Spec{Block: &hclspec.Spec_Default{Default: &hclspec.Default{
		Primary: &hclspec.Spec{Block: &hclspec.Spec_Attr{Attr: &hclspec.Attr{Name: name, Type: typ}}},
		Default: &hclspec.Spec{Block: &hclspec.Spec_Literal{Literal: &hclspec.Literal{Value: literal}}},
	}}}
}

func sBlock(nested *hclspec.Spec) *hclspec.Spec {
	return &hclspec.Spec{Block: &hclspec.Spec_BlockValue{BlockValue: &hclspec.Block{Nested: nested}}}
}

// sBlockAttrs is a map written as a block (`engines { llamacpp = "..." }`);
// through the agent's JSON path the `= { ... }` form decodes the same.
func sBlockAttrs(typ string) *hclspec.Spec {
	return &hclspec.Spec{Block: &hclspec.Spec_BlockAttrs{BlockAttrs: &hclspec.BlockAttrs{Type: typ}}}
}

// PluginConfigSpec is the schema of the plugin config block.
func PluginConfigSpec() *hclspec.Spec {
	return sObject(map[string]*hclspec.Spec{
		"consul": sBlock(sObject(map[string]*hclspec.Spec{
			"address":      sAttr("string", false),
			"token_file":   sAttr("string", false),
			"service_name": sDefault("service_name", "string", fmt.Sprintf("%q", registry.DefaultServiceName)),
		})),
		"engines":            sBlockAttrs("string"),
		"default_engine":     sDefault("default_engine", "string", fmt.Sprintf("%q", defaultEngine)),
		"fingerprint_period": sDefault("fingerprint_period", "string", fmt.Sprintf("%q", defaultFingerprintPeriod.String())),
		"require_gpu":        sDefault("require_gpu", "bool", "false"),
		"gpu_sharing":        sDefault("gpu_sharing", "bool", "true"),
		"vram_headroom_mib":  sDefault("vram_headroom_mib", "number", fmt.Sprint(defaultVRAMHeadroomMiB)),
		"model_dir":          sAttr("string", false),
		"engine_token_file":  sAttr("string", false),
		"advertise_address":  sAttr("string", false),
		"node_id":            sAttr("string", false),
		"metrics_address":    sAttr("string", false),
	})
}

// TaskConfigSpec is the schema of a task's config block.
func TaskConfigSpec() *hclspec.Spec {
	return sObject(map[string]*hclspec.Spec{
		"engine":     sAttr("string", false),
		"model":      sAttr("string", true),
		"model_name": sAttr("string", false),
		// A number written here converts to its string form, so one type
		// takes both a port label and a port number.
		"port":       sAttr("string", false),
		"ctx":        sAttr("number", false),
		"slots":      sAttr("number", false),
		"gpu_layers": sAttr("number", false),
		"threads":    sAttr("number", false),
		"gpus":       sAttr("any", false),
		"vram_mib":   sAttr("number", false),
		"extra_args": sAttr("list(string)", false),
		"env":        sBlockAttrs("string"),
		"pool":       sAttr("string", false),
		"service": sBlock(sObject(map[string]*hclspec.Spec{
			"name": sAttr("string", false),
			"tags": sAttr("list(string)", false),
		})),
	})
}

// impliedType is the cty type the agent encodes a config of this spec as.
func impliedType(spec *hclspec.Spec) (map[string]cty.Type, error) {
	hs, err := hclspecdec.Convert(spec)
	if err != nil {
		return nil, fmt.Errorf("schema: %w", err)
	}
	ty := hcldec.ImpliedType(hs)
	if !ty.IsObjectType() {
		return nil, fmt.Errorf("schema root is %s, not an object", ty.FriendlyName())
	}
	return ty.AttributeTypes(), nil
}

// unmarshalConfig decodes the agent's cty/msgpack bytes. It reads the root
// map key by key (rather than handing the whole buffer to cty) so that an
// unknown or ill-typed field is reported by name, and so that an `any`
// attribute, which the agent encodes as its concrete value, can be decoded.
func unmarshalConfig(data []byte, spec *hclspec.Spec) (map[string]cty.Value, error) {
	atys, err := impliedType(spec)
	if err != nil {
		return nil, err
	}
	out := make(map[string]cty.Value, len(atys))
	if len(data) > 0 {
		dec := msgpack.NewDecoder(bytes.NewReader(data))
		n, err := dec.DecodeMapLen()
		if err != nil {
			return nil, fmt.Errorf("config is not a msgpack map: %w", err)
		}
		for i := 0; i < n; i++ {
			key, err := dec.DecodeString()
			if err != nil {
				return nil, fmt.Errorf("config key %d is not a string: %w", i, err)
			}
			raw, err := dec.DecodeRaw()
			if err != nil {
				return nil, fmt.Errorf("field %q: truncated value: %w", key, err)
			}
			aty, known := atys[key]
			if !known {
				return nil, fmt.Errorf("field %q: unknown field (known: %s)", key, strings.Join(sortedKeys(atys), ", "))
			}
			var v cty.Value
			if aty == cty.DynamicPseudoType {
				v, err = decodeDynamic(raw)
			} else {
				v, err = ctymsgpack.Unmarshal(raw, aty)
			}
			if err != nil {
				return nil, fmt.Errorf("field %q: %s", key+pathSuffix(err), pathMessage(err, aty))
			}
			out[key] = v
		}
	}
	for k, t := range atys {
		if _, ok := out[k]; !ok {
			out[k] = cty.NullVal(t)
		}
	}
	return out, nil
}

// decodeDynamic turns a plain msgpack value into a cty value.
func decodeDynamic(raw []byte) (cty.Value, error) {
	var x interface{}
	if err := msgpack.Unmarshal(raw, &x); err != nil {
		return cty.NilVal, err
	}
	return goToCty(x)
}

func goToCty(x interface{}) (cty.Value, error) {
	switch v := x.(type) {
	case nil:
		return cty.NullVal(cty.DynamicPseudoType), nil
	case bool:
		return cty.BoolVal(v), nil
	case string:
		return cty.StringVal(v), nil
	case int8, int16, int32, int64, int:
		return cty.NumberIntVal(toInt64(v)), nil
	case uint8, uint16, uint32, uint64, uint:
		return cty.NumberUIntVal(toUint64(v)), nil
	case float32:
		return cty.NumberFloatVal(float64(v)), nil
	case float64:
		return cty.NumberFloatVal(v), nil
	case []interface{}:
		if len(v) == 0 {
			return cty.EmptyTupleVal, nil
		}
		vals := make([]cty.Value, len(v))
		for i, e := range v {
			c, err := goToCty(e)
			if err != nil {
				return cty.NilVal, fmt.Errorf("[%d]: %w", i, err)
			}
			vals[i] = c
		}
		return cty.TupleVal(vals), nil
	case map[string]interface{}:
		vals := make(map[string]cty.Value, len(v))
		for k, e := range v {
			c, err := goToCty(e)
			if err != nil {
				return cty.NilVal, fmt.Errorf("[%q]: %w", k, err)
			}
			vals[k] = c
		}
		return cty.ObjectVal(vals), nil
	default:
		return cty.NilVal, fmt.Errorf("unsupported value of type %T", x)
	}
}

func toInt64(x interface{}) int64 {
	switch v := x.(type) {
	case int8:
		return int64(v)
	case int16:
		return int64(v)
	case int32:
		return int64(v)
	case int64:
		return v
	case int:
		return int64(v)
	}
	return 0
}

func toUint64(x interface{}) uint64 {
	switch v := x.(type) {
	case uint8:
		return uint64(v)
	case uint16:
		return uint64(v)
	case uint32:
		return uint64(v)
	case uint64:
		return v
	case uint:
		return uint64(v)
	}
	return 0
}

// pathSuffix renders the part of a cty path error below the field
// (`[2]`, `["key"]`), so errors point at the element.
func pathSuffix(err error) string {
	pe, ok := err.(cty.PathError)
	if !ok {
		return ""
	}
	var b strings.Builder
	for _, step := range pe.Path {
		switch s := step.(type) {
		case cty.IndexStep:
			if s.Key.Type() == cty.String {
				fmt.Fprintf(&b, "[%q]", s.Key.AsString())
			} else if s.Key.Type() == cty.Number {
				fmt.Fprintf(&b, "[%s]", s.Key.AsBigFloat().Text('f', -1))
			}
		case cty.GetAttrStep:
			b.WriteString("." + s.Name)
		}
	}
	return b.String()
}

func pathMessage(err error, want cty.Type) string {
	msg := err.Error()
	if pe, ok := err.(cty.PathError); ok {
		msg = pe.Error()
	}
	return fmt.Sprintf("expected %s: %s", want.FriendlyName(), msg)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// fields reads typed Go values out of a decoded config, collecting the
// first error with the field's name.
type fields struct {
	vals   map[string]cty.Value
	prefix string
	err    error
}

func (f *fields) fail(name, format string, args ...interface{}) {
	if f.err == nil {
		f.err = fmt.Errorf("field %q: %s", f.prefix+name, fmt.Sprintf(format, args...))
	}
}

func (f *fields) get(name string) (cty.Value, bool) {
	v, ok := f.vals[name]
	if !ok || v.IsNull() || !v.IsKnown() {
		return cty.NilVal, false
	}
	return v, true
}

func (f *fields) str(name, def string) string {
	v, ok := f.get(name)
	if !ok {
		return def
	}
	if v.Type() != cty.String {
		f.fail(name, "must be a string, got %s", v.Type().FriendlyName())
		return def
	}
	return v.AsString()
}

func (f *fields) boolean(name string, def bool) bool {
	v, ok := f.get(name)
	if !ok {
		return def
	}
	if v.Type() != cty.Bool {
		f.fail(name, "must be a bool, got %s", v.Type().FriendlyName())
		return def
	}
	return v.True()
}

// integer reads a whole number in [min, max].
func (f *fields) integer(name string, def, min, max int) int {
	v, ok := f.get(name)
	if !ok {
		return def
	}
	n, err := ctyInt(v)
	if err != nil {
		f.fail(name, "%v", err)
		return def
	}
	if n < int64(min) || n > int64(max) {
		f.fail(name, "must be between %d and %d, got %d", min, max, n)
		return def
	}
	return int(n)
}

func ctyInt(v cty.Value) (int64, error) {
	if v.Type() != cty.Number {
		return 0, fmt.Errorf("must be a number, got %s", v.Type().FriendlyName())
	}
	bf := v.AsBigFloat()
	if !bf.IsInt() {
		return 0, fmt.Errorf("must be a whole number, got %s", bf.Text('g', -1))
	}
	n, acc := bf.Int64()
	if acc != big.Exact {
		return 0, fmt.Errorf("number %s is out of range", bf.Text('g', -1))
	}
	return n, nil
}

func (f *fields) strList(name string) []string {
	v, ok := f.get(name)
	if !ok {
		return nil
	}
	if !(v.Type().IsListType() || v.Type().IsTupleType() || v.Type().IsSetType()) {
		f.fail(name, "must be a list of strings, got %s", v.Type().FriendlyName())
		return nil
	}
	var out []string
	i := 0
	for it := v.ElementIterator(); it.Next(); i++ {
		_, e := it.Element()
		if e.IsNull() || e.Type() != cty.String {
			f.fail(fmt.Sprintf("%s[%d]", name, i), "must be a string")
			return nil
		}
		out = append(out, e.AsString())
	}
	return out
}

func (f *fields) strMap(name string) map[string]string {
	v, ok := f.get(name)
	if !ok {
		return nil
	}
	if !(v.Type().IsMapType() || v.Type().IsObjectType()) {
		f.fail(name, "must be a map of strings, got %s", v.Type().FriendlyName())
		return nil
	}
	out := map[string]string{}
	for it := v.ElementIterator(); it.Next(); {
		k, e := it.Element()
		if e.IsNull() || e.Type() != cty.String {
			f.fail(fmt.Sprintf("%s[%q]", name, k.AsString()), "must be a string")
			return nil
		}
		out[k.AsString()] = e.AsString()
	}
	return out
}

// object returns a nested block's fields (empty when the block is absent).
func (f *fields) object(name string) *fields {
	sub := &fields{vals: map[string]cty.Value{}, prefix: f.prefix + name + "."}
	v, ok := f.get(name)
	if ok && v.Type().IsObjectType() {
		for k := range v.Type().AttributeTypes() {
			sub.vals[k] = v.GetAttr(k)
		}
	}
	return sub
}

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
	}
	period := f.str("fingerprint_period", d.FingerprintPeriod.String())
	if c.err != nil {
		return PluginConfig{}, fmt.Errorf("plugin config: %w", c.err)
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
		Engine:    f.str("engine", ""),
		Model:     f.str("model", ""),
		ModelName: f.str("model_name", ""),
		Port:      f.str("port", ""),
		Ctx:       f.integer("ctx", 0, 0, maxInt),
		Slots:     f.integer("slots", 0, 0, 4096),
		GPULayers: f.integer("gpu_layers", 0, -1, 100000),
		Threads:   f.integer("threads", 0, 0, 4096),
		VRAMMiB:   f.integer("vram_mib", 0, 0, maxInt),
		ExtraArgs: f.strList("extra_args"),
		Env:       f.strMap("env"),
		Pool:      f.str("pool", ""),
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
