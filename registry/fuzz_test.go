package registry

import (
	"reflect"
	"strings"
	"testing"
	"unicode"
)

// listOf turns a fuzzed string into list elements the registry can carry:
// no commas (the meta separator) and no surrounding whitespace.
// (None is nil, as FromRegistry decodes it.)
func listOf(s string) []string {
	l := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
	if len(l) == 0 {
		return nil
	}
	return l
}

// What the driver writes (Meta, Tags), the router reads back (FromRegistry)
// unchanged; a registration Meta refuses (over Consul's limits) is never
// half-written; an instance without a model never decodes.
func FuzzMetaRoundTrip(f *testing.F) {
	f.Add("tiny", "llamacpp", "b3447", "node-a", "gpu-box", "pool-a", "ab12", "GPU-1,GPU-2", "/v1/chat/completions,/v1/completions", "tiny:1", 4096, 2, 1024, 24576, false)
	f.Add("", "", "", "", "", "", "", "", "", "", 0, 0, 0, 0, true)
	f.Add("m=1", "e,x", " ", "n\x00", "ü", "p ", strings.Repeat("d", 600), " , ,", ",,", "x", -1, -2147483648, 9223372036854775807, 0, true)
	f.Fuzz(func(t *testing.T, model, engine, engVer, node, nodeName, pool, digest, gpus, apis, catalog string, ctxLen, slots, vramRes, vramTot int, draining bool) {
		in := Instance{
			ID: "i-1", Service: DefaultServiceName, Address: "10.0.0.1", Port: 8081,
			Model: model, Engine: engine, EngineVersion: engVer, NodeID: node, NodeName: nodeName, PoolID: pool,
			ModelDigest: digest, GPUs: listOf(gpus), APIs: listOf(apis), NodeModels: catalog,
			Ctx: ctxLen, Slots: slots, VRAMReservedMiB: vramRes, VRAMTotalMiB: vramTot, Draining: draining,
			Health: HealthPassing,
		}
		meta, err := in.Meta()
		if err != nil {
			for _, v := range []string{model, engine, engVer, node, nodeName, pool, digest, strings.Join(in.GPUs, ","), strings.Join(in.APIs, ","), catalog} {
				if len(v) > MaxMetaValue {
					return
				}
			}
			t.Fatalf("Meta refused an instance within Consul's limits: %v", err)
		}
		out, err := FromRegistry(in.ID, in.Service, in.Address, in.Port, in.Tags(), meta, in.Health)
		if model == "" {
			if err == nil {
				t.Fatalf("decoded an instance without a model: %+v", out)
			}
			return
		}
		if err != nil {
			t.Fatalf("FromRegistry(Meta()) failed: %v\nmeta %q", err, meta)
		}
		if !reflect.DeepEqual(in, out) {
			t.Fatalf("round trip changed the instance:\n in  %+v\n out %+v", in, out)
		}
	})
}

// Whatever a registry returns, FromRegistry answers without panicking, and
// what it decodes survives another write and read unchanged.
func FuzzFromRegistry(f *testing.F) {
	f.Add("schema=1\nmodel=tiny\nctx=4096\ngpus=a, b,,c", "model=x,engine=y,pool=z")
	f.Add("ctx=nope", "")
	f.Add("schema=99", "model=m")
	f.Add("", "model=from-tag,pool=p")
	f.Fuzz(func(t *testing.T, rawMeta, rawTags string) {
		meta := map[string]string{}
		for _, line := range strings.Split(rawMeta, "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				meta[k] = v
			}
		}
		var tags []string
		if rawTags != "" {
			tags = strings.Split(rawTags, ",")
		}
		inst, err := FromRegistry("i", DefaultServiceName, "10.0.0.1", 1, tags, meta, HealthWarning)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if inst.Model == "" {
			t.Fatalf("decoded without a model: %+v", inst)
		}
		meta2, err := inst.Meta()
		if err != nil {
			return // a value over Consul's limits came in; Meta refuses to write it back
		}
		again, err := FromRegistry(inst.ID, inst.Service, inst.Address, inst.Port, inst.Tags(), meta2, inst.Health)
		if err != nil || !reflect.DeepEqual(inst, again) {
			t.Fatalf("decode → encode → decode changed it: %v\n first  %+v\n second %+v", err, inst, again)
		}
	})
}
