// The instance schema: what an engine instance is and how it is written
// to and read from a service registry (Consul tags and meta, or the home
// profile's embedded registry). It is the one schema the driver (writer) and
// the router (reader) share; neither imports the other.

package registry

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// DefaultServiceName is the Consul service name engines register under.
const DefaultServiceName = "llorch-engine"

// Health is the registry's view of an instance.
type Health string

const (
	HealthPassing  Health = "passing"
	HealthWarning  Health = "warning"
	HealthCritical Health = "critical"
)

// Instance is one running engine serving one model at one address.
type Instance struct {
	// ID is the registry service ID: stable for the life of a task so a
	// plugin restart re-asserts the same registration instead of adding one.
	ID      string
	Service string
	Address string
	Port    int

	Model         string // the name clients send in the "model" field
	ModelDigest   string // sha256 of the model file (hex), when known
	Engine        string // llamacpp, vllm, ollama, sglang, tgi
	EngineVersion string

	NodeID   string
	NodeName string
	PoolID   string

	Ctx   int // context length per slot
	Slots int // parallel slots (sequences) the engine serves

	GPUs            []string // GPU UUIDs the engine is pinned to; empty on CPU
	VRAMReservedMiB int
	VRAMTotalMiB    int

	// APIs lists the OpenAI-compatible paths the engine serves, e.g.
	// "/v1/chat/completions".
	APIs []string

	// NodeModels is the compact catalog of models present on the node
	// (see EncodeCatalog); it lets the router answer availability questions
	// without a second registry.
	NodeModels string

	// TLS says the instance serves HTTPS at Address:Port, with a
	// certificate naming Address (meta tls=1). Instances without it stay
	// plain HTTP, so a fleet can move to TLS one instance at a time.
	TLS bool

	Draining bool
	Health   Health
}

// URL is the base URL of the instance's HTTP API.
func (i Instance) URL() string {
	host := i.Address
	if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
		host = "[" + host + "]"
	}
	scheme := "http://"
	if i.TLS {
		scheme = "https://"
	}
	return scheme + host + ":" + strconv.Itoa(i.Port)
}

// Serves reports whether the instance serves the given OpenAI path. An
// instance that declares no APIs is assumed to serve chat and completions.
func (i Instance) Serves(path string) bool {
	if len(i.APIs) == 0 {
		return path == "/v1/chat/completions" || path == "/v1/completions"
	}
	for _, p := range i.APIs {
		if p == path {
			return true
		}
	}
	return false
}

// Meta keys. Consul allows letters, digits, '-' and '_' only (no dots), at
// most 64 pairs, values at most 512 bytes.
const (
	MetaNodeID        = "node_id"
	MetaNodeName      = "node_name"
	MetaPoolID        = "pool_id"
	MetaModel         = "model"
	MetaModelDigest   = "model_digest"
	MetaEngine        = "engine"
	MetaEngineVersion = "engine_version"
	MetaCtx           = "ctx"
	MetaSlots         = "slots_total"
	MetaGPUs          = "gpu_uuids"
	MetaVRAMReserved  = "vram_reserved_mib"
	MetaVRAMTotal     = "vram_total_mib"
	MetaAPIs          = "apis"
	MetaNodeModels    = "node_models"
	MetaDraining      = "draining"
	MetaTLS           = "tls" // "1": the instance speaks HTTPS; absent or "0": plain HTTP
	MetaSchema        = "llorch_schema"
)

// SchemaVersion is written into every registration so a reader can refuse
// registrations written by an incompatible writer.
const SchemaVersion = "1"

// Tag prefixes; tags make instances filterable in Consul's catalog queries.
const (
	TagModel  = "model="
	TagEngine = "engine="
	TagPool   = "pool="
)

// MaxMetaValue is Consul's limit on a meta value's length.
const MaxMetaValue = 512

var metaKeyRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// Tags returns the registry tags for the instance.
func (i Instance) Tags() []string {
	tags := []string{TagModel + i.Model, TagEngine + i.Engine}
	if i.PoolID != "" {
		tags = append(tags, TagPool+i.PoolID)
	}
	return tags
}

// Meta returns the registry meta for the instance. It fails rather than
// truncating when a value is over Consul's limits, so a registration never
// silently loses data.
func (i Instance) Meta() (map[string]string, error) {
	m := map[string]string{
		MetaSchema:        SchemaVersion,
		MetaNodeID:        i.NodeID,
		MetaNodeName:      i.NodeName,
		MetaPoolID:        i.PoolID,
		MetaModel:         i.Model,
		MetaModelDigest:   i.ModelDigest,
		MetaEngine:        i.Engine,
		MetaEngineVersion: i.EngineVersion,
		MetaCtx:           strconv.Itoa(i.Ctx),
		MetaSlots:         strconv.Itoa(i.Slots),
		MetaGPUs:          strings.Join(i.GPUs, ","),
		MetaVRAMReserved:  strconv.Itoa(i.VRAMReservedMiB),
		MetaVRAMTotal:     strconv.Itoa(i.VRAMTotalMiB),
		MetaAPIs:          strings.Join(i.APIs, ","),
		MetaNodeModels:    i.NodeModels,
		MetaDraining:      strconv.FormatBool(i.Draining),
	}
	if i.TLS {
		m[MetaTLS] = "1"
	}
	for k, v := range m {
		if !metaKeyRE.MatchString(k) {
			return nil, fmt.Errorf("instance %s: meta key %q is not a valid Consul meta key", i.ID, k)
		}
		if len(v) > MaxMetaValue {
			return nil, fmt.Errorf("instance %s: meta %s is %d bytes, over Consul's %d-byte limit", i.ID, k, len(v), MaxMetaValue)
		}
	}
	return m, nil
}

// Validate checks the fields every registration needs.
func (i Instance) Validate() error {
	var missing []string
	if i.ID == "" {
		missing = append(missing, "id")
	}
	if i.Address == "" {
		missing = append(missing, "address")
	}
	if i.Port <= 0 || i.Port > 65535 {
		missing = append(missing, "port")
	}
	if i.Model == "" {
		missing = append(missing, "model")
	}
	if i.Engine == "" {
		missing = append(missing, "engine")
	}
	if i.NodeID == "" {
		missing = append(missing, "node_id")
	}
	if len(missing) > 0 {
		return fmt.Errorf("instance %q: missing or invalid %s", i.ID, strings.Join(missing, ", "))
	}
	return nil
}

// FromRegistry rebuilds an Instance from what a registry returned. Unknown
// meta keys are ignored (a newer writer may add some); a different schema
// version is an error.
func FromRegistry(id, service, address string, port int, tags []string, meta map[string]string, health Health) (Instance, error) {
	if v := meta[MetaSchema]; v != "" && v != SchemaVersion {
		return Instance{}, fmt.Errorf("instance %s: schema version %q, this build reads %q", id, v, SchemaVersion)
	}
	atoi := func(key string) (int, error) {
		s := meta[key]
		if s == "" {
			return 0, nil
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, fmt.Errorf("instance %s: meta %s=%q is not an integer: %w", id, key, s, err)
		}
		return n, nil
	}
	inst := Instance{
		ID: id, Service: service, Address: address, Port: port,
		Model:         meta[MetaModel],
		ModelDigest:   meta[MetaModelDigest],
		Engine:        meta[MetaEngine],
		EngineVersion: meta[MetaEngineVersion],
		NodeID:        meta[MetaNodeID],
		NodeName:      meta[MetaNodeName],
		PoolID:        meta[MetaPoolID],
		GPUs:          splitList(meta[MetaGPUs]),
		APIs:          splitList(meta[MetaAPIs]),
		NodeModels:    meta[MetaNodeModels],
		Draining:      meta[MetaDraining] == "true",
		TLS:           meta[MetaTLS] == "1",
		Health:        health,
	}
	var err error
	if inst.Ctx, err = atoi(MetaCtx); err != nil {
		return Instance{}, err
	}
	if inst.Slots, err = atoi(MetaSlots); err != nil {
		return Instance{}, err
	}
	if inst.VRAMReservedMiB, err = atoi(MetaVRAMReserved); err != nil {
		return Instance{}, err
	}
	if inst.VRAMTotalMiB, err = atoi(MetaVRAMTotal); err != nil {
		return Instance{}, err
	}
	// Tags fill what an older or hand-made registration left out of meta.
	for _, t := range tags {
		switch {
		case strings.HasPrefix(t, TagModel) && inst.Model == "":
			inst.Model = strings.TrimPrefix(t, TagModel)
		case strings.HasPrefix(t, TagEngine) && inst.Engine == "":
			inst.Engine = strings.TrimPrefix(t, TagEngine)
		case strings.HasPrefix(t, TagPool) && inst.PoolID == "":
			inst.PoolID = strings.TrimPrefix(t, TagPool)
		}
	}
	if inst.Model == "" {
		return Instance{}, fmt.Errorf("instance %s: no model in meta or tags", id)
	}
	return inst, nil
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	parts := strings.Split(s, ",")
	out := parts[:0]
	for _, p := range parts {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Less orders instances deterministically: by node id, then instance id.
// Every tie-break in llorch uses it.
func Less(a, b Instance) bool {
	if a.NodeID != b.NodeID {
		return a.NodeID < b.NodeID
	}
	return a.ID < b.ID
}

// Sort sorts instances by (node id, instance id).
func Sort(list []Instance) {
	sort.Slice(list, func(x, y int) bool { return Less(list[x], list[y]) })
}
