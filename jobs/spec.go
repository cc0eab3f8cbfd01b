// Package jobs turns an engine pool — a model served by N replicas of an
// engine — into a Nomad job for the llorch task driver, and submits,
// inspects and stops it through Nomad's HTTP API. Nomad's own scheduler
// then places the pool; llorch's part is to make the job right: the
// constraints that keep replicas off nodes without the model, without the
// driver or without the VRAM.
package jobs

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/llorch/llorch/models/catalog"
)

// PoolSpec describes an engine pool. Field names are the YAML keys.
type PoolSpec struct {
	// Name is the Nomad job ID and the pool id engines register under.
	Name string `yaml:"name"`
	// Model is the model file's path on the nodes (the same path on each,
	// under the driver's model_dir; see docs/models.md).
	Model string `yaml:"model"`
	// ModelName is what clients send as "model"; default: the file's base
	// name without extension, which is also its catalog name.
	ModelName string `yaml:"model_name"`
	Engine    string `yaml:"engine"`   // default llamacpp
	Replicas  int    `yaml:"replicas"` // default 1, or min when max is set
	// Min and Max are the range the router may scale the pool in (kept in
	// the job's meta and scaling block); Max 0 means a fixed-size pool.
	// Min may be 0: the pool then sleeps until a request wakes it.
	Min *int `yaml:"min"` // default 1 when max is set
	Max int  `yaml:"max"`
	// Idle is how long without requests before the router scales the pool
	// down to min (a Go duration; default 10m).
	Idle      string `yaml:"idle"`
	Ctx       int    `yaml:"ctx"` // per slot
	Slots     int    `yaml:"slots"`
	GPUs      int    `yaml:"gpus"`     // GPUs per replica; 0 = CPU
	VRAMMiB   int    `yaml:"vram_mib"` // per GPU; 0 = estimate when the model file is readable here
	GPULayers int    `yaml:"gpu_layers"`

	Datacenters []string `yaml:"datacenters"` // default ["*"]
	NodePool    string   `yaml:"node_pool"`
	Namespace   string   `yaml:"namespace"`
	Region      string   `yaml:"region"`

	CPU      int `yaml:"cpu"`       // MHz; default 1000
	MemoryMB int `yaml:"memory_mb"` // default 1024

	// DistinctHosts keeps replicas on different nodes (anti-affinity).
	DistinctHosts bool `yaml:"distinct_hosts"`
	// Affinity prefers nodes whose attribute matches, e.g.
	// {attribute: "${node.class}", value: "gpu-a100", weight: 50}.
	Affinities []AffinitySpec `yaml:"affinities"`
	// RequireModelPresent adds the "model present" constraint (default true).
	RequireModelPresent *bool `yaml:"require_model_present"`
}

// AffinitySpec is one Nomad affinity.
type AffinitySpec struct {
	Attribute string `yaml:"attribute"`
	Operator  string `yaml:"operator"` // default "="
	Value     string `yaml:"value"`
	Weight    int8   `yaml:"weight"` // -100..100; negative = anti-affinity
}

// jobIDRE is what Nomad accepts as a job ID and what we accept as a pool
// name (it also becomes a Consul tag value).
var jobIDRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$`)

var knownEngines = map[string]bool{"llamacpp": true, "vllm": true, "ollama": true, "sglang": true, "tgi": true}

// Defaults fills unset fields.
func (s *PoolSpec) Defaults() {
	if s.Engine == "" {
		s.Engine = "llamacpp"
	}
	if s.Max > 0 {
		if s.Min == nil {
			s.Min = ptr(1)
		}
		if s.Idle == "" {
			s.Idle = DefaultIdle.String()
		}
		if s.Replicas == 0 {
			s.Replicas = *s.Min
		}
	}
	if s.Replicas == 0 && s.Max == 0 {
		s.Replicas = 1
	}
	if s.ModelName == "" && s.Model != "" {
		s.ModelName = catalog.ModelName(s.Model)
	}
	if len(s.Datacenters) == 0 {
		s.Datacenters = []string{"*"}
	}
	if s.CPU == 0 {
		s.CPU = 1000
	}
	if s.MemoryMB == 0 {
		s.MemoryMB = 1024
	}
	if s.RequireModelPresent == nil {
		t := true
		s.RequireModelPresent = &t
	}
}

// Validate reports the first problem, naming the field.
func (s PoolSpec) Validate() error {
	switch {
	case !jobIDRE.MatchString(s.Name):
		return fmt.Errorf("name: %q is not a valid pool name (letters, digits, '.', '_', '-'; up to 128)", s.Name)
	case s.Model == "":
		return fmt.Errorf("model: required (the model file's path on the nodes)")
	case !knownEngines[s.Engine]:
		return fmt.Errorf("engine: %q is not one of llamacpp, vllm, ollama, sglang, tgi", s.Engine)
	case s.Max == 0 && (s.Min != nil || s.Idle != ""):
		return fmt.Errorf("min/idle: set, but max is 0 (a scaling range needs max)")
	case s.Max == 0 && (s.Replicas < 1 || s.Replicas > 1000):
		return fmt.Errorf("replicas: %d is out of range 1..1000", s.Replicas)
	case s.Max > 1000:
		return fmt.Errorf("max: %d is over 1000", s.Max)
	case s.Max > 0 && (*s.Min < 0 || *s.Min > s.Max):
		return fmt.Errorf("min: %d is out of range 0..max (%d)", *s.Min, s.Max)
	case s.Max > 0 && (s.Replicas < *s.Min || s.Replicas > s.Max):
		return fmt.Errorf("replicas: %d is outside min..max (%d..%d)", s.Replicas, *s.Min, s.Max)
	case s.Ctx < 0:
		return fmt.Errorf("ctx: %d is negative", s.Ctx)
	case s.Slots < 0:
		return fmt.Errorf("slots: %d is negative", s.Slots)
	case s.GPUs < 0:
		return fmt.Errorf("gpus: %d is negative", s.GPUs)
	case s.VRAMMiB < 0:
		return fmt.Errorf("vram_mib: %d is negative", s.VRAMMiB)
	case s.VRAMMiB > 0 && s.GPUs == 0:
		return fmt.Errorf("vram_mib: set, but gpus is 0 (VRAM is per GPU)")
	}
	if s.Max > 0 {
		if d, err := time.ParseDuration(s.Idle); err != nil || d <= 0 {
			return fmt.Errorf("idle: %q is not a positive duration (e.g. 10m)", s.Idle)
		}
	}
	for i, a := range s.Affinities {
		if a.Attribute == "" || a.Value == "" {
			return fmt.Errorf("affinities[%d]: attribute and value are required", i)
		}
		if a.Weight < -100 || a.Weight > 100 || a.Weight == 0 {
			return fmt.Errorf("affinities[%d].weight: %d is not in -100..100 (and not 0)", i, a.Weight)
		}
	}
	return nil
}

// LoadSpec reads a pool spec from YAML (JSON is YAML too). Unknown fields
// are errors that name the field, so a typo never silently changes a pool.
func LoadSpec(path string) (PoolSpec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return PoolSpec{}, fmt.Errorf("read pool spec: %w", err)
	}
	return ParseSpec(b)
}

// ParseSpec parses and validates a pool spec.
func ParseSpec(b []byte) (PoolSpec, error) {
	var s PoolSpec
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return PoolSpec{}, fmt.Errorf("pool spec: %s", nameFields(b, err))
	}
	s.Defaults()
	if err := s.Validate(); err != nil {
		return PoolSpec{}, fmt.Errorf("pool spec: %w", err)
	}
	return s, nil
}

var lineRE = regexp.MustCompile(`line (\d+): `)

// nameFields rewrites yaml's "line N: cannot unmarshal ..." into
// "field <key> (line N): ...", so a type error names the field as an
// unknown-field error already does.
func nameFields(src []byte, err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var root yaml.Node
	if yaml.Unmarshal(src, &root) != nil {
		return msg
	}
	keys := map[string]string{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode, yaml.SequenceNode:
			for i, c := range n.Content {
				p := path
				if n.Kind == yaml.SequenceNode {
					p = fmt.Sprintf("%s[%d]", path, i)
				}
				walk(c, p)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				keys[fmt.Sprint(v.Line)] = p
				walk(v, p)
			}
		}
	}
	walk(&root, "")
	return lineRE.ReplaceAllStringFunc(msg, func(m string) string {
		line := lineRE.FindStringSubmatch(m)[1]
		if k, ok := keys[line]; ok {
			return fmt.Sprintf("field %s (line %s): ", k, line)
		}
		return m
	})
}
