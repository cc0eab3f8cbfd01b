package nomadclient

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/llorch/llorch/internal/nomadpb/hclspec"
)

func attr(name, typ string, required bool) *hclspec.Spec {
	return &hclspec.Spec{Block: &hclspec.Spec_Attr{Attr: &hclspec.Attr{Name: name, Type: typ, Required: required}}}
}

func object(m map[string]*hclspec.Spec) *hclspec.Spec {
	return &hclspec.Spec{Block: &hclspec.Spec_Object{Object: &hclspec.Object{Attributes: m}}}
}

func withDefault(name, typ, lit string) *hclspec.Spec {
	return &hclspec.Spec{Block: &hclspec.Spec_Default{Default: &hclspec.Default{
		Primary: attr(name, typ, false),
		Default: &hclspec.Spec{Block: &hclspec.Spec_Literal{Literal: &hclspec.Literal{Value: lit}}},
	}}}
}

// msgpack helpers to write the expected bytes the way the research file
// states them.
func fixstr(s string) []byte { return append([]byte{0xa0 | byte(len(s))}, s...) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestEncodeMatchesCapturedAgentBytes reproduces the bytes captured from a
// real v1.6.9 agent (research file §6.3) exactly.
func TestEncodeMatchesCapturedAgentBytes(t *testing.T) {
	execSpec := object(map[string]*hclspec.Spec{
		"command": attr("", "string", true),
		"args":    attr("", "list(string)", false),
	})
	long := strings.Repeat("0123456789abcdefghij", 2)[:34]
	cases := []struct {
		name string
		spec *hclspec.Spec
		cfg  map[string]interface{}
		want []byte
	}{
		{
			name: "command and args",
			spec: execSpec,
			cfg:  map[string]interface{}{"command": "/bin/sh", "args": []string{"-c", long, "x"}},
			want: cat([]byte{0x82}, fixstr("args"), []byte{0x93}, fixstr("-c"), []byte{0xd9, 0x22}, []byte(long),
				fixstr("x"), fixstr("command"), fixstr("/bin/sh")),
		},
		{
			name: "absent optional attribute is nil",
			spec: execSpec,
			cfg:  map[string]interface{}{"command": "/bin/sleep"},
			want: cat([]byte{0x82}, fixstr("args"), []byte{0xc0}, fixstr("command"), fixstr("/bin/sleep")),
		},
		{
			name: "plugin config defaults applied",
			spec: object(map[string]*hclspec.Spec{
				"enabled":    withDefault("enabled", "bool", "false"),
				"no_cgroups": withDefault("no_cgroups", "bool", "false"),
			}),
			cfg:  map[string]interface{}{"enabled": true},
			want: cat([]byte{0x82}, fixstr("enabled"), []byte{0xc3}, fixstr("no_cgroups"), []byte{0xc2}),
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := EncodeConfig(c.spec, c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, c.want) {
				t.Fatalf("bytes differ from the captured agent bytes\n got %s\nwant %s", hex.EncodeToString(got), hex.EncodeToString(c.want))
			}
		})
	}
}

// An unknown key fails in the agent before the driver is called.
func TestEncodeRejectsUnknownKey(t *testing.T) {
	spec := object(map[string]*hclspec.Spec{"command": attr("", "string", true)})
	_, err := EncodeConfig(spec, map[string]interface{}{"command": "x", "comand": "y"})
	if err == nil || !strings.Contains(err.Error(), "comand") {
		t.Fatalf("want an error naming \"comand\", got %v", err)
	}
}
