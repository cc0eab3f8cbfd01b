// The plugin and task config schemas the agent decodes HCL with.

package driver

import (
	"fmt"

	"github.com/llorch/llorch/internal/nomadpb/hclspec"
	"github.com/llorch/llorch/registry"
)

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
			"ca_file":      sAttr("string", false),
			"cert_file":    sAttr("string", false),
			"key_file":     sAttr("string", false),
			"service_name": sDefault("service_name", "string", fmt.Sprintf("%q", registry.DefaultServiceName)),
		})),
		"engines":                        sBlockAttrs("string"),
		"default_engine":                 sDefault("default_engine", "string", fmt.Sprintf("%q", defaultEngine)),
		"fingerprint_period":             sDefault("fingerprint_period", "string", fmt.Sprintf("%q", defaultFingerprintPeriod.String())),
		"require_gpu":                    sDefault("require_gpu", "bool", "false"),
		"gpu_sharing":                    sDefault("gpu_sharing", "bool", "true"),
		"vram_headroom_mib":              sDefault("vram_headroom_mib", "number", fmt.Sprint(defaultVRAMHeadroomMiB)),
		"model_dir":                      sAttr("string", false),
		"engine_token_file":              sAttr("string", false),
		"advertise_address":              sAttr("string", false),
		"node_id":                        sAttr("string", false),
		"metrics_address":                sAttr("string", false),
		"allowed_unsafe_options":         sAttr("list(string)", false),
		"allow_models_outside_model_dir": sDefault("allow_models_outside_model_dir", "bool", "false"),
		"default_user":                   sAttr("string", false),
		"denied_host_uids":               sAttr("string", false),
		"denied_host_gids":               sAttr("string", false),
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
		"port":               sAttr("string", false),
		"ctx":                sAttr("number", false),
		"slots":              sAttr("number", false),
		"gpu_layers":         sAttr("number", false),
		"threads":            sAttr("number", false),
		"gpus":               sAttr("any", false),
		"vram_mib":           sAttr("number", false),
		"extra_args":         sAttr("list(string)", false),
		"env":                sBlockAttrs("string"),
		"pool":               sAttr("string", false),
		"tls_cert_file":      sAttr("string", false),
		"tls_key_file":       sAttr("string", false),
		"tls_client_ca_file": sAttr("string", false),
		"service": sBlock(sObject(map[string]*hclspec.Spec{
			"name": sAttr("string", false),
			"tags": sAttr("list(string)", false),
		})),
	})
}
