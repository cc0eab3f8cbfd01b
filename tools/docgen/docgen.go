// Package docgen generates docs/configuration.md from the code: the
// router's option table, the driver's plugin and task config schemas (the
// very hclspec the agent reads) and the home profile's config struct. Its
// test fails when the committed document and the code differ, so the
// reference cannot drift.
package docgen

//go:generate go test -run TestConfigurationReferenceMatchesCode -update .

import (
	"flag"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/llorch/llorch/driver"
	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/home"
	"github.com/llorch/llorch/internal/nomadpb/hclspec"
	"github.com/llorch/llorch/jobs"
	"github.com/llorch/llorch/router"
	"github.com/llorch/llorch/router/keys"
)

// Field is one documented setting.
type Field struct {
	Name, Type, Default, Help string
	Required                  bool
}

// SchemaFields flattens an hclspec object into dotted field names.
func SchemaFields(spec *hclspec.Spec) []Field {
	var out []Field
	var walk func(prefix string, s *hclspec.Spec)
	walk = func(prefix string, s *hclspec.Spec) {
		for name, sub := range s.GetObject().GetAttributes() {
			full := prefix + name
			switch {
			case sub.GetAttr() != nil:
				out = append(out, Field{Name: full, Type: sub.GetAttr().GetType(), Required: sub.GetAttr().GetRequired()})
			case sub.GetDefault() != nil:
				d := sub.GetDefault()
				out = append(out, Field{Name: full, Type: d.GetPrimary().GetAttr().GetType(), Default: d.GetDefault().GetLiteral().GetValue()})
			case sub.GetBlockAttrs() != nil:
				out = append(out, Field{Name: full, Type: "block of " + sub.GetBlockAttrs().GetType()})
			case sub.GetBlockValue() != nil:
				walk(full+".", sub.GetBlockValue().GetNested())
			}
		}
	}
	walk("", spec)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// YAMLFields lists a struct's yaml keys (nested structs and slices of
// structs as key[].sub).
func YAMLFields(t reflect.Type, prefix string) []Field {
	var out []Field
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if key == "" || key == "-" {
			continue
		}
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, YAMLFields(ft.Elem(), prefix+key+"[].")...)
		case ft.Kind() == reflect.Struct:
			out = append(out, YAMLFields(ft, prefix+key+".")...)
		default:
			out = append(out, Field{Name: prefix + key, Type: ft.String()})
		}
	}
	return out
}

// HomeFlags lists `llorch home`'s flags from the flag set the command
// parses. Defaults that depend on the environment are shown as the code's
// fixed defaults (the environment of whoever generates the doc must not
// leak into it).
func HomeFlags() []Field {
	fs := flag.NewFlagSet("home", flag.ContinueOnError)
	var f home.Flags
	f.Bind(fs, engine.Names())
	var out []Field
	fs.VisitAll(func(fl *flag.Flag) {
		def := fl.DefValue
		switch fl.Name {
		case "log-json":
			def = "false"
		case "log-level":
			def = "info"
		case "engine":
			if def == "" {
				def = "llamacpp"
			}
		}
		if def == "0" && fl.Name != "gpu-layers" {
			def = ""
		}
		out = append(out, Field{Name: fl.Name, Default: def, Help: fl.Usage})
	})
	return out
}

// Configuration renders docs/configuration.md.
func Configuration() (string, error) {
	var b strings.Builder
	b.WriteString("# Configuration reference\n\n")
	b.WriteString("Generated from the code by `go test ./tools/docgen -update`; a test fails when this file and the code differ.\n\n")

	b.WriteString("## Router (`llorch router`)\n\nEvery option is a flag or an environment variable; a flag wins. Secrets come from files (or the environment), never from flags.\n\n")
	b.WriteString("| flag | environment | default | what it does |\n|---|---|---|---|\n")
	for _, o := range router.Options() {
		fmt.Fprintf(&b, "| `--%s` | `%s` | %s | %s |\n", o.Flag, o.Env, code(o.Default), esc(o.Help))
	}
	b.WriteString("\nAlso read from the environment only: `LLORCH_API_TOKEN` (when no token file is set), `CONSUL_HTTP_TOKEN` (likewise), `LLORCH_AUTH_OPTIONAL`.\n\n")

	b.WriteString("## API keys file (`--keys-file`, and one key per entry under `--keys-consul-prefix`)\n\n" +
		"YAML or JSON; unknown keys are errors. `llorch key new` writes entries and prints each secret once; only its SHA-256 digest is stored. " +
		"Limits are per key across all routers: each router enforces 1/n of them, n = the passing instances of `--router-service` (see docs/security.md). Example:\n\n" +
		"```yaml\nkeys:\n  - name: team-a\n    digest: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n    models: [\"llama-*\"]\n    rpm: 600\n    tpm: 200000\n    concurrent: 16\n```\n\n" +
		"| key | type | what it does |\n|---|---|---|\n")
	kf := YAMLFields(reflect.TypeOf(keys.File{}), "")
	for _, f := range kf {
		h, ok := keysHelp[f.Name]
		if !ok {
			return "", fmt.Errorf("no help text for keys file key %q: add it to tools/docgen", f.Name)
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", f.Name, code(f.Type), esc(h))
	}
	if err := unknownHelp(keysHelp, kf); err != nil {
		return "", err
	}
	b.WriteString("\n")

	for _, sec := range []struct {
		title, intro string
		fields       []Field
		help         map[string]string
	}{
		{"Driver plugin config (`plugin \"llorch\" { config { ... } }`)", "The Nomad client's plugin stanza; see deploy/nomad/agent-plugin.hcl.", SchemaFields(driver.PluginConfigSpec()), pluginHelp},
		{"Task config (job `task { driver = \"llorch\" config { ... } }`)", "An unknown or ill-typed field fails the task with a message that names it; see example.nomad.hcl.", SchemaFields(driver.TaskConfigSpec()), taskHelp},
	} {
		fmt.Fprintf(&b, "## %s\n\n%s\n\n| field | type | default | what it does |\n|---|---|---|---|\n", sec.title, sec.intro)
		for _, f := range sec.fields {
			h, ok := sec.help[f.Name]
			if !ok {
				return "", fmt.Errorf("no help text for %s field %q: add it to tools/docgen", sec.title, f.Name)
			}
			def := code(f.Default)
			if f.Required {
				def = "required"
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", f.Name, code(f.Type), def, esc(h))
		}
		if err := unknownHelp(sec.help, sec.fields); err != nil {
			return "", err
		}
		b.WriteString("\n")
	}

	b.WriteString("## Home profile flags (`llorch home`)\n\n`--model` and its neighbours describe one pool without a file; `--config` reads pools from a file instead (`--addr` and `--state-dir` still override it).\n\n| flag | default | what it does |\n|---|---|---|\n")
	for _, f := range HomeFlags() {
		fmt.Fprintf(&b, "| `--%s` | %s | %s |\n", f.Name, code(f.Default), esc(f.Help))
	}
	b.WriteString("\n## Home profile config file (`llorch home --config home.yaml`)\n\nYAML. Unknown keys are errors that name the key. Example:\n\n```yaml\naddr: 127.0.0.1:8080\non_demand: true        # each model starts on its first request\nidle: 10m              # and stops after 10 minutes without one\nram_budget_mib: 16384  # CPU pools; GPU pools use vram_budget_mib\npools:\n  - name: tiny\n    model: /models/tiny.gguf\n    slots: 2\n    ctx: 2048\n```\n\nWith `on_demand`, a request for a stopped model waits (up to `queue_timeout`) while it loads; to make room under a budget the least recently used unpinned pools are stopped first. Each pool counts by its estimate (`llorch estimate model.gguf -ctx N -slots N`) unless `memory_mib` says otherwise. `/v1/models` lists every configured model with `state` (`loaded`, `loading`, `stopped`).\n\n| key | type | what it does |\n|---|---|---|\n")
	hf := YAMLFields(reflect.TypeOf(home.Config{}), "")
	for _, f := range hf {
		h, ok := homeHelp[f.Name]
		if !ok {
			return "", fmt.Errorf("no help text for home config key %q: add it to tools/docgen", f.Name)
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", f.Name, code(f.Type), esc(h))
	}
	if err := unknownHelp(homeHelp, hf); err != nil {
		return "", err
	}
	b.WriteString("\n## Pool spec (`llorch jobs render|run -f pool.yaml`, or the same as flags)\n\nA pool is a Nomad job for the llorch driver. With `max` it follows demand: the router (`--nomad-addr`) scales it between `min` and `max` (kept in the job's meta `llorch_min`, `llorch_max`, `llorch_idle` and in a disabled `scaling` block, so Nomad refuses counts outside the range). For example `llorch jobs run -name tiny -model /models/tiny.gguf -min 0 -max 4 -idle 10m`.\n\n| key | type | what it does |\n|---|---|---|\n")
	pf := YAMLFields(reflect.TypeOf(jobs.PoolSpec{}), "")
	for _, f := range pf {
		h, ok := poolHelp[f.Name]
		if !ok {
			return "", fmt.Errorf("no help text for pool spec key %q: add it to tools/docgen", f.Name)
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", f.Name, code(strings.TrimPrefix(f.Type, "*")), esc(h))
	}
	if err := unknownHelp(poolHelp, pf); err != nil {
		return "", err
	}
	b.WriteString("\n## Other environment variables\n\n| variable | read by | meaning |\n|---|---|---|\n")
	for _, e := range otherEnv {
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", e[0], e[1], esc(e[2]))
	}
	return b.String(), nil
}

func unknownHelp(help map[string]string, fields []Field) error {
	known := map[string]bool{}
	for _, f := range fields {
		known[f.Name] = true
	}
	for k := range help {
		if !known[k] {
			return fmt.Errorf("help text for %q, which the code does not have", k)
		}
	}
	return nil
}

func code(s string) string {
	if s == "" {
		return ""
	}
	return "`" + s + "`"
}

func esc(s string) string { return strings.ReplaceAll(s, "|", "\\|") }

var pluginHelp = map[string]string{
	"consul.address":                 "Consul HTTP address engines register with (else `CONSUL_HTTP_ADDR`); without either the driver only probes engines",
	"consul.token_file":              "file holding the driver's Consul token (policy deploy/consul/driver-policy.hcl); else `CONSUL_HTTP_TOKEN`",
	"consul.ca_file":                 "PEM CA bundle the agent's HTTPS certificate is verified against (any TLS file set: HTTPS); else `CONSUL_CACERT` / `CONSUL_HTTP_SSL`",
	"consul.cert_file":               "client certificate for an agent that verifies clients (verify_incoming), with `consul.key_file`; else `CONSUL_CLIENT_CERT`",
	"consul.key_file":                "PEM private key of `consul.cert_file`; else `CONSUL_CLIENT_KEY`",
	"consul.service_name":            "Consul service engines register under",
	"engines":                        "engine name → binary path, e.g. `llamacpp = \"/usr/local/bin/llama-server\"`; the fingerprint lists the engines found",
	"default_engine":                 "engine of tasks that name none",
	"fingerprint_period":             "how often GPUs and the model catalog are re-read (changes are sent at once)",
	"require_gpu":                    "report the driver unhealthy on a node without a usable NVIDIA GPU",
	"gpu_sharing":                    "let several engines share a GPU when its free VRAM allows",
	"vram_headroom_mib":              "VRAM per GPU kept free when assigning GPUs",
	"model_dir":                      "the node's model directory: fingerprinted into `driver.llorch.models` (see docs/models.md); relative task model paths resolve here",
	"engine_token_file":              "file holding the engine API key; engines that take one require it, and the router presents it",
	"advertise_address":              "address registered in Consul for engines (default: the task's port mapping host IP, else the node's first non-loopback IPv4)",
	"node_id":                        "node id in registrations (default: Nomad's node id)",
	"allowed_unsafe_options":         "engine flags and env vars that run code the job chooses (`--trust-remote-code`, `LD_PRELOAD`, … see docs/engines.md) that jobs on this node may set; default none",
	"allow_models_outside_model_dir": "let tasks name model files outside model_dir (checked after resolving symlinks); default false",
	"metrics_address":                "host:port for the driver's Prometheus /metrics (tasks, engines, GPUs by node_id); registered in Consul as `llorch-driver`; empty = off",
	"default_user":                   "user engines run as when the task sets no `user` (name or uid, `user:group` too); empty = the plugin's own user",
	"denied_host_uids":               "uids an engine may not run as, like raw_exec's: `\"0-999,65534\"`; checked at StartTask against the task's user, else default_user, else the plugin's",
	"denied_host_gids":               "gids (primary or supplementary) an engine's user may not have, same format",
}

var taskHelp = map[string]string{
	"engine":             "llamacpp, vllm, ollama, sglang or tgi (default: the plugin's default_engine)",
	"model":              "model file (GGUF) or model name/directory, absolute or under model_dir",
	"model_name":         "name clients send as `model` (default: the file's base name)",
	"port":               "a port label of the group's network block (`\"http\"`) or a number",
	"ctx":                "context length per slot",
	"slots":              "parallel sequences the engine serves",
	"gpu_layers":         "layers to offload to the GPU; -1 = all",
	"threads":            "CPU threads",
	"gpus":               "GPUs: a count, or a list of GPU UUIDs",
	"vram_mib":           "VRAM to reserve per GPU (default: whole GPUs)",
	"extra_args":         "more engine arguments, appended as given",
	"env":                "extra environment variables for the engine",
	"pool":               "pool id registered with the engine (default `<job>/<group>`)",
	"tls_cert_file":      "the task's PEM certificate (relative: in the task dir, e.g. `secrets/tls.crt` from a template); the port then serves HTTPS (llama-server and vLLM themselves, relayed engines through the relay) and the instance is announced with `tls=1`",
	"tls_key_file":       "PEM private key of `tls_cert_file` (may be the same combined file)",
	"tls_client_ca_file": "relayed engines only: the relay requires client certificates signed by this CA (mTLS: only the router gets in)",
	"service.name":       "Consul service name for this task's engine (default: the plugin's)",
	"service.tags":       "extra Consul tags",
}

var poolHelp = map[string]string{
	"name":                   "pool name: the Nomad job ID and the pool id engines register under",
	"model":                  "model file's path on the nodes (required)",
	"model_name":             "name clients send as `model` (default: the file's base name)",
	"engine":                 "llamacpp (default), vllm, ollama, sglang or tgi",
	"replicas":               "replicas (default 1; with `max`: `min`)",
	"min":                    "with `max`: fewest replicas the router scales down to; 0 = scale to zero, woken by the next request (default 1; flag `-min`)",
	"max":                    "most replicas the router scales up to while requests queue or slots stay busy; 0 = a fixed-size pool (flag `-max`)",
	"idle":                   "with `max`: time without requests before the router scales down to `min` (default `10m`; flag `-idle`)",
	"ctx":                    "context per slot",
	"slots":                  "parallel slots per replica",
	"gpus":                   "GPUs per replica (0 = CPU)",
	"vram_mib":               "VRAM per GPU for the placement constraint (default: estimated from the model when readable here)",
	"gpu_layers":             "layers to offload to the GPU",
	"datacenters":            "datacenters (default all)",
	"node_pool":              "Nomad node pool",
	"namespace":              "Nomad namespace",
	"region":                 "Nomad region",
	"cpu":                    "CPU MHz per replica (default 1000)",
	"memory_mb":              "memory MB per replica (default 1024)",
	"distinct_hosts":         "one replica per node",
	"affinities[].attribute": "node attribute, e.g. `${node.class}`",
	"affinities[].operator":  "comparison (default `=`)",
	"affinities[].value":     "value to compare with",
	"affinities[].weight":    "-100..100; negative = anti-affinity",
	"require_model_present":  "constrain to nodes whose catalog lists the model (default true)",
}

var homeHelp = map[string]string{
	"addr":               "router address (default `127.0.0.1:8080`)",
	"state_dir":          "tokens, engine logs, and the state file that lets a restart clean up engines left by a crash (default `$XDG_STATE_HOME/llorch` or `~/.local/state/llorch`)",
	"api_token_file":     "client API token file (default `<state_dir>/api.token`, created on first start)",
	"pools[].name":       "pool name (default: the model name)",
	"pools[].engine":     "engine (default llamacpp)",
	"pools[].model":      "model file (required)",
	"pools[].model_name": "name clients send as `model` (default: the file's base name)",
	"pools[].binary":     "engine program (default `$LLORCH_CACHE/bin/<engine>`, then `PATH`)",
	"pools[].ctx":        "context per slot",
	"pools[].slots":      "parallel slots (default 1)",
	"pools[].threads":    "CPU threads",
	"pools[].gpu_layers": "layers to offload to the GPU",
	"pools[].extra_args": "more engine arguments",
	"on_demand":          "start each pool on its first request and stop it after `idle` or to make room under a budget (default false: every pool starts at start-up and runs until exit)",
	"idle":               "with on_demand: time without requests before a pool is stopped (default `10m`)",
	"vram_budget_mib":    "with on_demand: VRAM the GPU pools (gpu_layers ≠ 0, vLLM, SGLang, TGI) may hold at once, by their estimates; least recently used unpinned pools are stopped to make room (0 = no bound)",
	"ram_budget_mib":     "with on_demand: the same bound for CPU pools (gpu_layers 0), in RAM",
	"queue_timeout":      "longest wait for a loading model or a busy slot before 503 DEADLINE_UNMET (default `2m`)",
	"queue_capacity":     "requests that may wait per model (default 32)",
	"pools[].pinned":     "with on_demand: start at start-up and never stop for idleness or eviction",
	"pools[].idle":       "this pool's idle time (default: the top-level idle)",
	"pools[].memory_mib": "what the pool counts against its budget (default: the model's estimate for its ctx and slots; required under a budget when the engine has no estimate)",
	"aliases":            "model aliases, `{alias: model}` (e.g. `{gpt-4o-mini: tiny}`); as the router's `--model-aliases`",
	"fallbacks":          "model fallbacks, `{model: [fallback, ...]}`, tried when the model has no free instance or a full queue; as the router's `--model-fallbacks`",
}

var otherEnv = [][3]string{
	{"LLORCH_PROFILE", "llorch home", "`cloud` makes `llorch home` refuse and point to `llorch router`; `home` runs the home profile even when `CONSUL_HTTP_ADDR` is set"},
	{"CONSUL_HTTP_ADDR", "llorch router, driver, llorch home", "Consul's address; `llorch home` refuses to start when it is set (it means the cloud profile) unless `LLORCH_PROFILE=home`"},
	{"LLORCH_CACHE", "scripts, home, tests", "where Consul, llama-server and the demo model are cached (default `~/.cache/llorch`); `llorch home` looks for engine programs in `$LLORCH_CACHE/bin`"},
	{"LLORCH_LOG_JSON, LLORCH_LOG_LEVEL", "llorch home", "as for `llorch router`: JSON log lines, log level"},
	{"LLORCH_DEMO_STATE, LLORCH_DEMO_ADDR", "scripts/demo.sh", "the demo's state dir (default `$LLORCH_CACHE/demo`) and address (default `127.0.0.1:8080`)"},
	{"LLORCH_CONSUL_BIN, LLORCH_LLAMA_SERVER, LLORCH_PROMETHEUS_BIN", "tests", "the consul, llama-server and prometheus programs the tests run (default: `$LLORCH_CACHE/bin`, then PATH)"},
	{"LLORCH_FUZZTIME", "scripts/test.sh", "how long `make test` runs each fuzz target (default `10s`)"},
	{"LLORCH_KEEP_GOING", "scripts/test.sh", "`1`: run the later phases of `make test` after a failed one (the exit status still fails)"},
	{"LLORCH_PHASE_LOG", "scripts/test.sh, .ci/run", "file the phase times are collected in (.ci/run adds its package install)"},
	{"LLORCH_HEAVY_LOCK_HELD", "scripts/build-prometheus.sh", "`1`: the caller already holds `/tmp/llorch-heavy.lock`, so the Prometheus build does not take it again"},
	{"LLORCH_NVML_MOCK", "tests", "only in binaries built with the `llorch_nvmlmock` tag: a simulated GPU set such as `dgxh100` or `dgxa100:2`"},
	{"LLORCH_MARKER", "e2e tests", "a marker the multi-host tests set on engine tasks to find their processes"},
	{"NOMAD_ADDR, NOMAD_TOKEN", "llorch jobs", "the Nomad API, as the nomad CLI reads them"},
	{"LLORCH_REQUIRE_INTEGRATION", "tests", "`1` (CI, and `make test` as root): a missing program or package fails tests instead of skipping them"},
	{"LLORCH_BIN", "tests", "the built llorch binary the protocol tests start"},
	{"LLORCH_E2E_KEEP", "e2e tests", "`1` keeps the e2e run directory (logs of every host) after a passing run; a failed run always keeps it"},
	{"LLORCH_SCHED_BENCH", "scheduler tests", "a duration: TestBenchDecide measures for that long instead of a smoke run"},
	{"LLORCH_ARTIFACTS", "tests", "where the /ui test writes its screenshot (default: a temporary directory)"},
}

var keysHelp = map[string]string{
	"keys[].name":       "the key's name (a-z, 0-9, `.`, `_`, `-`; at most 63): logs (`identity=key:<name>`), metric labels and `/v2/usage` show it; in Consul KV the entry's last path segment when absent",
	"keys[].digest":     "`sha256:` and the hex SHA-256 of the secret (`llorch key new` prints the secret once); the secret itself is never stored",
	"keys[].models":     "model globs (`path.Match`: `llama-*`) the key may use; any other model is 403 `MODEL_NOT_ALLOWED`; empty = every model",
	"keys[].priority":   "admission class: `interactive` (default; `X-Priority: batch` may lower it) or `batch` (always batch)",
	"keys[].rpm":        "requests per minute (answered by an engine; refused ones cost nothing); over it: 429 `rate_limit_exceeded` with Retry-After; 0 = none",
	"keys[].tpm":        "prompt + completion tokens per minute, as the engines report them in usage (streams: the router asks for `stream_options.include_usage`); admitted while under the limit, so the last request may overshoot by its own size; 0 = none",
	"keys[].concurrent": "requests at once; 0 = none",
	"keys[].expires":    "RFC 3339 time after which the key is refused (401 `KEY_EXPIRED`)",
	"keys[].disabled":   "`true` refuses the key (401 `KEY_DISABLED`) without removing it",
}
