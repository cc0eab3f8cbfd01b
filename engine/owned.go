package engine

import (
	"strings"
)

// What the driver owns on each engine's command line and environment.
//
// The driver makes an engine safe to announce: it binds it to the task's
// port, requires the engine token, names the model and sizes its slots. A
// job that could set any of those through its config's `env` or
// `extra_args` could open the engine to the network without a key, or
// announce one thing and run another, so such a job is refused at
// StartTask, naming the field. Options that make the engine run code the
// job chooses (`--trust-remote-code` and kin, LD_PRELOAD) are refused
// unless the plugin config allows them by name. docs/engines.md lists these
// tables; a test checks the list there against Rules.

// Option is one flag or environment variable of an engine.
type Option struct {
	// Flags are every spelling of the flag ("-np", "--parallel").
	Flags []string
	// Env are the environment variables the engine reads for the same
	// setting.
	Env []string
	// Field is the task config field the driver sets it from; "" when only
	// the driver (or the plugin config) decides it.
	Field string
	// What says what it controls, for errors and docs.
	What string
	// Secret marks options whose value is a secret: their values are
	// redacted wherever the driver logs or writes a command line or env.
	Secret bool
}

// Rules is one engine's table.
type Rules struct {
	// Owned options are set by the driver; a job may not set them.
	Owned []Option
	// Code options make the engine run code or read files the job
	// chooses; a job may set them only where the plugin config allows.
	Code []Option
	// Abbrev is true for engines whose parser accepts unambiguous
	// prefixes of long flags and "_" for "-" (Python's argparse, as in
	// vLLM and SGLang), so "--trust-remote" and "--api_key" are matched
	// too.
	Abbrev bool
}

// common applies to every engine: the GPU pinning the driver (or the
// agent's device env) decides, and the loader variables that run code.
var (
	commonOwned = []Option{
		{Env: []string{"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"}, Field: "gpus", What: "the GPUs the engine may use"},
	}
	commonCode = []Option{
		{Env: []string{"LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH"}, What: "shared libraries loaded into the engine"},
		{Env: []string{"PATH"}, What: "where the engine finds the programs it runs"},
	}
	pythonCode = []Option{
		{Env: []string{"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE"}, What: "where Python imports code from"},
	}
)

var rules = map[string]Rules{
	"llamacpp": {
		Owned: []Option{
			{Flags: []string{"-m", "--model", "-mu", "--model-url", "-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "-dr", "--docker-repo"},
				Env: []string{"LLAMA_ARG_MODEL", "LLAMA_ARG_MODEL_URL", "LLAMA_ARG_HF_REPO", "LLAMA_ARG_HF_FILE"}, Field: "model", What: "the model file"},
			{Flags: []string{"-a", "--alias"}, Env: []string{"LLAMA_ARG_ALIAS"}, Field: "model_name", What: "the served model name"},
			{Flags: []string{"--host"}, Env: []string{"LLAMA_ARG_HOST"}, What: "the listen address"},
			{Flags: []string{"--port"}, Env: []string{"LLAMA_ARG_PORT"}, Field: "port", What: "the listen port"},
			{Flags: []string{"--api-key", "--api-key-file"}, Env: []string{"LLAMA_API_KEY", "LLAMA_ARG_API_KEY_FILE"}, What: "the engine token", Secret: true},
			{Flags: []string{"-c", "--ctx-size"}, Env: []string{"LLAMA_ARG_CTX_SIZE"}, Field: "ctx", What: "the context size"},
			{Flags: []string{"-np", "--parallel"}, Env: []string{"LLAMA_ARG_N_PARALLEL"}, Field: "slots", What: "the number of slots"},
			{Flags: []string{"--log-file"}, Env: []string{"LLAMA_LOG_FILE"}, What: "where the engine logs (the task's log)"},
			{Flags: []string{"--metrics", "--slots", "--no-slots"}, Env: []string{"LLAMA_ARG_ENDPOINT_METRICS", "LLAMA_ARG_ENDPOINT_SLOTS", "LLAMA_ARG_NO_ENDPOINT_SLOTS"},
				What: "the load endpoints the router places requests by"},
			{Flags: []string{"--path"}, Env: []string{"LLAMA_ARG_STATIC_PATH"}, What: "a host directory served over HTTP"},
		},
	},
	"vllm": {
		Abbrev: true,
		Owned: []Option{
			{Flags: []string{"--model"}, Field: "model", What: "the model"},
			{Flags: []string{"--served-model-name"}, Field: "model_name", What: "the served model name"},
			{Flags: []string{"--host", "--uds"}, What: "the listen address"},
			{Flags: []string{"--port"}, Field: "port", What: "the listen port"},
			{Flags: []string{"--api-key"}, Env: []string{"VLLM_API_KEY"}, What: "the engine token", Secret: true},
			{Flags: []string{"--max-model-len"}, Field: "ctx", What: "the context size"},
			{Flags: []string{"--max-num-seqs"}, Field: "slots", What: "the number of slots"},
			{Flags: []string{"--config"}, What: "a file of further flags, none of them checked"},
		},
		Code: []Option{
			{Flags: []string{"--trust-remote-code"}, What: "runs Python code shipped with the model"},
			{Flags: []string{"--middleware"}, What: "imports a Python class into the server"},
			{Flags: []string{"--tool-parser-plugin"}, What: "imports a Python file into the server"},
			{Flags: []string{"--worker-extension-cls"}, What: "imports a Python class into the workers"},
			{Flags: []string{"--logits-processors"}, What: "imports Python code into the sampler"},
			{Flags: []string{"--allowed-local-media-path"}, What: "lets requests read host files"},
		},
	},
	"sglang": {
		Abbrev: true,
		Owned: []Option{
			{Flags: []string{"--model-path", "--model"}, Field: "model", What: "the model"},
			{Flags: []string{"--served-model-name"}, Field: "model_name", What: "the served model name"},
			{Flags: []string{"--host"}, What: "the listen address"},
			{Flags: []string{"--port"}, Field: "port", What: "the listen port"},
			{Flags: []string{"--api-key"}, What: "the engine token", Secret: true},
			{Flags: []string{"--context-length"}, Field: "ctx", What: "the context size"},
			{Flags: []string{"--max-running-requests"}, Field: "slots", What: "the number of slots"},
			{Flags: []string{"--enable-metrics"}, What: "the load endpoint the router places requests by"},
			{Flags: []string{"--config"}, What: "a file of further flags, none of them checked"},
		},
		Code: []Option{
			{Flags: []string{"--trust-remote-code"}, What: "runs Python code shipped with the model"},
			{Flags: []string{"--enable-custom-logit-processor"}, What: "runs serialized Python code sent with requests"},
		},
	},
	"tgi": {
		Owned: []Option{
			{Flags: []string{"--model-id"}, Env: []string{"MODEL_ID"}, Field: "model", What: "the model"},
			{Flags: []string{"--hostname"}, Env: []string{"HOSTNAME"}, What: "the listen address"},
			{Flags: []string{"-p", "--port"}, Env: []string{"PORT"}, Field: "port", What: "the listen port"},
			{Flags: []string{"--api-key"}, Env: []string{"API_KEY"}, What: "the engine token", Secret: true},
			{Flags: []string{"--max-total-tokens", "--max-input-tokens", "--max-input-length"}, Env: []string{"MAX_TOTAL_TOKENS", "MAX_INPUT_TOKENS", "MAX_INPUT_LENGTH"},
				Field: "ctx", What: "the context size"},
			{Flags: []string{"--max-concurrent-requests"}, Env: []string{"MAX_CONCURRENT_REQUESTS"}, Field: "slots", What: "the number of slots"},
		},
		Code: []Option{
			{Flags: []string{"--trust-remote-code"}, Env: []string{"TRUST_REMOTE_CODE"}, What: "runs Python code shipped with the model"},
		},
	},
	"ollama": {
		Owned: []Option{
			{Env: []string{"OLLAMA_HOST"}, What: "the listen address and port"},
			{Env: []string{"HOME", "OLLAMA_MODELS"}, What: "the engine's private model store and key pair"},
			{Env: []string{"OLLAMA_KEEP_ALIVE", "OLLAMA_MAX_LOADED_MODELS"}, What: "keeping the task's one model loaded"},
			{Env: []string{"OLLAMA_NUM_PARALLEL"}, Field: "slots", What: "the number of slots"},
			{Env: []string{"OLLAMA_CONTEXT_LENGTH"}, Field: "ctx", What: "the context size"},
			{Env: []string{"OLLAMA_ORIGINS"}, What: "which browser origins may call the engine"},
		},
	},
}

// RulesFor is the table of an engine (by adapter name), with the options
// every engine shares. An unknown engine gets the shared ones only.
func RulesFor(engine string) Rules {
	r := rules[engine]
	out := Rules{Abbrev: r.Abbrev}
	out.Owned = append(append(out.Owned, r.Owned...), commonOwned...)
	out.Code = append(append(out.Code, r.Code...), commonCode...)
	if r.Abbrev {
		out.Code = append(out.Code, pythonCode...)
	}
	return out
}

// FlagName is the flag an argument spells ("--port=1" → "--port"); ""
// for a value.
func FlagName(arg string) string {
	if len(arg) < 2 || arg[0] != '-' || arg == "--" {
		return ""
	}
	if i := strings.IndexByte(arg, '='); i > 0 {
		return arg[:i]
	}
	return arg
}

// matchesFlag reports whether the flag name in an argument selects flag.
func (r Rules) matchesFlag(name, flag string) bool {
	if name == flag {
		return true
	}
	if !r.Abbrev || !strings.HasPrefix(name, "--") || !strings.HasPrefix(flag, "--") {
		return false
	}
	n := strings.ReplaceAll(name, "_", "-")
	if n == flag {
		return true
	}
	// argparse takes any unambiguous prefix; refuse every prefix of an
	// owned flag, since we do not know the parser's other flags.
	return len(n) >= 4 && strings.HasPrefix(flag, n)
}

// Flag finds the option an argument sets: owned (the driver's), code (it
// runs code) or neither.
func (r Rules) Flag(arg string) (opt Option, code, found bool) {
	name := FlagName(arg)
	if name == "" {
		return Option{}, false, false
	}
	for _, set := range []struct {
		opts []Option
		code bool
	}{{r.Owned, false}, {r.Code, true}} {
		for _, o := range set.opts {
			for _, f := range o.Flags {
				if r.matchesFlag(name, f) {
					return o, set.code, true
				}
			}
		}
	}
	return Option{}, false, false
}

// EnvVar finds the option an environment variable sets.
func (r Rules) EnvVar(name string) (opt Option, code, found bool) {
	for _, set := range []struct {
		opts []Option
		code bool
	}{{r.Owned, false}, {r.Code, true}} {
		for _, o := range set.opts {
			for _, e := range o.Env {
				if e == name {
					return o, set.code, true
				}
			}
		}
	}
	return Option{}, false, false
}

// SecretFlag reports whether an argument is a flag whose value is a secret.
func (r Rules) SecretFlag(arg string) bool {
	o, _, ok := r.Flag(arg)
	return ok && o.Secret
}

// SecretEnv reports whether an environment variable holds a secret of the
// engine (its token).
func (r Rules) SecretEnv(name string) bool {
	o, _, ok := r.EnvVar(name)
	return ok && o.Secret
}
