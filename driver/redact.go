// Redaction: what the driver writes about an engine's command line and
// environment (the supervisor's log, driver logs) names secrets by their
// fingerprint (authmin.Identity, "token:9f86d0"), never by value.

package driver

import (
	"strings"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/engine"
)

// secretNameParts mark an environment variable as a secret whatever the
// engine: job-injected credentials (VAULT_TOKEN, NOMAD_TOKEN, HF_TOKEN,
// AWS_SECRET_ACCESS_KEY, …) are named like this.
var secretNameParts = []string{"TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "APIKEY", "PRIVATE_KEY", "CREDENTIAL"}

func secretEnvName(engName, name string) bool {
	if engine.RulesFor(engName).SecretEnv(name) {
		return true
	}
	up := strings.ToUpper(name)
	for _, p := range secretNameParts {
		if strings.Contains(up, p) {
			return true
		}
	}
	return false
}

// redactArgs is argv with the values of the engine's secret flags
// ("--api-key K", "--api-key=K") replaced by their fingerprint. The
// supervisor's placeholder for a secret read from a file stays as it is.
func redactArgs(engName string, args []string) []string {
	r := engine.RulesFor(engName)
	out := make([]string, len(args))
	copy(out, args)
	for i := 0; i < len(out); i++ {
		if !r.SecretFlag(out[i]) {
			continue
		}
		if j := strings.IndexByte(out[i], '='); j > 0 {
			out[i] = out[i][:j+1] + fingerprintValue(out[i][j+1:])
			continue
		}
		if i+1 < len(out) {
			out[i+1] = fingerprintValue(out[i+1])
			i++
		}
	}
	return out
}

// redactEnv is KEY=VALUE pairs with secret values replaced by their
// fingerprint.
func redactEnv(engName string, env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if i := strings.IndexByte(kv, '='); i > 0 && secretEnvName(engName, kv[:i]) {
			kv = kv[:i+1] + fingerprintValue(kv[i+1:])
		}
		out = append(out, kv)
	}
	return out
}

func fingerprintValue(v string) string {
	if v == secretArgPlaceholder || v == "" {
		return v
	}
	return authmin.Identity(v)
}
