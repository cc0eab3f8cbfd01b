// Package hclspecdec turns the plugin protocol's hclspec.Spec messages into
// hcldec specs, the way a Nomad agent reads a plugin's schema. The driver
// uses it to know the cty type of the msgpack bytes it receives; the protocol
// test client uses it to encode configs exactly as the agent does.
package hclspecdec

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/llorch/llorch/internal/nomadpb/hclspec"
)

// Convert builds the hcldec spec for a protocol spec. Inside an Object the
// map key is the implied name of a nested attribute or block; the children
// of a Default get no implied name (as in the agent), so they must carry one.
func Convert(s *hclspec.Spec) (hcldec.Spec, error) {
	return convert(s, "")
}

func convert(s *hclspec.Spec, implied string) (hcldec.Spec, error) {
	if s == nil {
		return nil, fmt.Errorf("nil spec")
	}
	nameOr := func(n string) (string, error) {
		if n != "" {
			return n, nil
		}
		if implied == "" {
			return "", fmt.Errorf("spec has no name and none is implied")
		}
		return implied, nil
	}
	switch b := s.Block.(type) {
	case *hclspec.Spec_Object:
		out := hcldec.ObjectSpec{}
		for k, v := range b.Object.GetAttributes() {
			c, err := convert(v, k)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[k] = c
		}
		return out, nil
	case *hclspec.Spec_Array:
		out := hcldec.TupleSpec{}
		for i, v := range b.Array.GetValues() {
			c, err := convert(v, "")
			if err != nil {
				return nil, fmt.Errorf("array[%d]: %w", i, err)
			}
			out = append(out, c)
		}
		return out, nil
	case *hclspec.Spec_Attr:
		name, err := nameOr(b.Attr.GetName())
		if err != nil {
			return nil, err
		}
		ty, err := ParseType(b.Attr.GetType())
		if err != nil {
			return nil, fmt.Errorf("attribute %s: %w", name, err)
		}
		return &hcldec.AttrSpec{Name: name, Type: ty, Required: b.Attr.GetRequired()}, nil
	case *hclspec.Spec_BlockValue:
		name, err := nameOr(b.BlockValue.GetName())
		if err != nil {
			return nil, err
		}
		nested, err := convert(b.BlockValue.GetNested(), "")
		if err != nil {
			return nil, fmt.Errorf("block %s: %w", name, err)
		}
		return &hcldec.BlockSpec{TypeName: name, Nested: nested, Required: b.BlockValue.GetRequired()}, nil
	case *hclspec.Spec_BlockAttrs:
		name, err := nameOr(b.BlockAttrs.GetName())
		if err != nil {
			return nil, err
		}
		ty, err := ParseType(b.BlockAttrs.GetType())
		if err != nil {
			return nil, fmt.Errorf("block attrs %s: %w", name, err)
		}
		return &hcldec.BlockAttrsSpec{TypeName: name, ElementType: ty, Required: b.BlockAttrs.GetRequired()}, nil
	case *hclspec.Spec_BlockList:
		name, err := nameOr(b.BlockList.GetName())
		if err != nil {
			return nil, err
		}
		nested, err := convert(b.BlockList.GetNested(), "")
		if err != nil {
			return nil, fmt.Errorf("block list %s: %w", name, err)
		}
		return &hcldec.BlockListSpec{TypeName: name, Nested: nested,
			MinItems: int(b.BlockList.GetMinItems()), MaxItems: int(b.BlockList.GetMaxItems())}, nil
	case *hclspec.Spec_BlockSet:
		name, err := nameOr(b.BlockSet.GetName())
		if err != nil {
			return nil, err
		}
		nested, err := convert(b.BlockSet.GetNested(), "")
		if err != nil {
			return nil, fmt.Errorf("block set %s: %w", name, err)
		}
		return &hcldec.BlockSetSpec{TypeName: name, Nested: nested,
			MinItems: int(b.BlockSet.GetMinItems()), MaxItems: int(b.BlockSet.GetMaxItems())}, nil
	case *hclspec.Spec_BlockMap:
		name, err := nameOr(b.BlockMap.GetName())
		if err != nil {
			return nil, err
		}
		if len(b.BlockMap.GetLabels()) == 0 {
			return nil, fmt.Errorf("block map %s: at least one label is required", name)
		}
		nested, err := convert(b.BlockMap.GetNested(), "")
		if err != nil {
			return nil, fmt.Errorf("block map %s: %w", name, err)
		}
		return &hcldec.BlockMapSpec{TypeName: name, LabelNames: b.BlockMap.GetLabels(), Nested: nested}, nil
	case *hclspec.Spec_Default:
		primary, err := convert(b.Default.GetPrimary(), "")
		if err != nil {
			return nil, fmt.Errorf("default primary: %w", err)
		}
		def, err := convert(b.Default.GetDefault(), "")
		if err != nil {
			return nil, fmt.Errorf("default value: %w", err)
		}
		return &hcldec.DefaultSpec{Primary: primary, Default: def}, nil
	case *hclspec.Spec_Literal:
		v, err := ParseLiteral(b.Literal.GetValue())
		if err != nil {
			return nil, err
		}
		return &hcldec.LiteralSpec{Value: v}, nil
	default:
		return nil, fmt.Errorf("spec with no block")
	}
}

// ParseType reads HCL type-expression source ("string", "list(string)", "any").
func ParseType(src string) (cty.Type, error) {
	expr, diags := hclsyntax.ParseExpression([]byte(src), "type", hcl.InitialPos)
	if diags.HasErrors() {
		return cty.NilType, fmt.Errorf("type %q: %s", src, diags.Error())
	}
	ty, diags := typeexpr.TypeConstraint(expr)
	if diags.HasErrors() {
		return cty.NilType, fmt.Errorf("type %q: %s", src, diags.Error())
	}
	return ty, nil
}

// ParseLiteral evaluates HCL expression source with no variables.
func ParseLiteral(src string) (cty.Value, error) {
	expr, diags := hclsyntax.ParseExpression([]byte(src), "literal", hcl.InitialPos)
	if diags.HasErrors() {
		return cty.NilVal, fmt.Errorf("literal %q: %s", src, diags.Error())
	}
	v, diags := expr.Value(nil)
	if diags.HasErrors() {
		return cty.NilVal, fmt.Errorf("literal %q: %s", src, diags.Error())
	}
	return v, nil
}
