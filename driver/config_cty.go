// Reading the agent's cty/msgpack config bytes into typed fields, with
// errors that name the field.

package driver

import (
	"bytes"
	"fmt"
	"math/big"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/vmihailenco/msgpack/v5"
	"github.com/zclconf/go-cty/cty"
	ctymsgpack "github.com/zclconf/go-cty/cty/msgpack"

	"github.com/llorch/llorch/internal/hclspecdec"
	"github.com/llorch/llorch/internal/nomadpb/hclspec"
)

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
