package nomadclient

import (
	"encoding/json"
	"fmt"

	"github.com/hashicorp/hcl/v2/hcldec"
	hcljson "github.com/hashicorp/hcl/v2/json"
	"github.com/zclconf/go-cty/cty"
	ctymsgpack "github.com/zclconf/go-cty/cty/msgpack"

	"github.com/llorch/llorch/internal/hclspecdec"
	"github.com/llorch/llorch/internal/nomadpb/hclspec"
)

// EncodeConfig encodes a config as the agent does: the raw config (a
// plugin stanza's config or a task's config, as decoded from HCL into Go
// values) goes to JSON, is parsed as HCL2 JSON, decoded with the plugin's
// spec, and marshalled with cty/msgpack using the value's own type. A key
// the spec does not know fails here, as it fails validation in the agent.
func EncodeConfig(spec *hclspec.Spec, cfg map[string]interface{}) ([]byte, error) {
	if cfg == nil {
		cfg = map[string]interface{}{}
	}
	val, err := DecodeConfig(spec, cfg)
	if err != nil {
		return nil, err
	}
	return ctymsgpack.Marshal(val, val.Type())
}

// DecodeConfig is the agent's decode step alone.
func DecodeConfig(spec *hclspec.Spec, cfg map[string]interface{}) (cty.Value, error) {
	dec, err := hclspecdec.Convert(spec)
	if err != nil {
		return cty.NilVal, fmt.Errorf("schema: %w", err)
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		return cty.NilVal, err
	}
	file, diags := hcljson.Parse(js, "config.json")
	if diags.HasErrors() {
		return cty.NilVal, fmt.Errorf("parse: %s", diags.Error())
	}
	val, diags := hcldec.Decode(file.Body, dec, nil)
	if diags.HasErrors() {
		return cty.NilVal, fmt.Errorf("decode: %s", diags.Error())
	}
	return val, nil
}
