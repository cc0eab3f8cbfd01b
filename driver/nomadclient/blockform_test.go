package nomadclient

import (
	"testing"

	"github.com/llorch/llorch/driver"
)

// The agent turns HCL1-parsed stanzas into JSON, where a block is a list of
// objects; the schema must take both that and the plain object form.
func TestPluginConfigBlockForms(t *testing.T) {
	for _, cfg := range []map[string]interface{}{
		{"engines": map[string]interface{}{"llamacpp": "/x"}, "consul": map[string]interface{}{"address": "a:1"}},
		{"engines": []interface{}{map[string]interface{}{"llamacpp": "/x"}}, "consul": []interface{}{map[string]interface{}{"address": "a:1"}}},
	} {
		b, err := EncodeConfig(driver.PluginConfigSpec(), cfg)
		if err != nil {
			t.Fatalf("%v: %v", cfg, err)
		}
		c, err := driver.DecodePluginConfig(b)
		if err != nil {
			t.Fatal(err)
		}
		if c.Engines["llamacpp"] != "/x" || c.Consul.Address != "a:1" || c.Consul.ServiceName != "llorch-engine" {
			t.Fatalf("%v decoded as %+v", cfg, c)
		}
	}
}
